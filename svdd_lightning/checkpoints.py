"""Safe checkpoints: weights in safetensors, the constructor in JSON, no pickled code.

A checkpoint directory holds ``config.json`` (``{"class_path": ..., "init_args": ...}``, nested for
sub-modules) and ``model.safetensors``. Loading one never unpickles and never calls a function: it
only constructs *loadable* classes, i.e. :class:`Configurable` subclasses defined in a trusted
package. ``svdd_lightning`` is trusted; a user's own package becomes trusted through

- an entry point in its ``pyproject.toml`` (nothing to call at run time), the group the built-in domains
  register in (the CLIs then also list the package's classes)::

      [project.entry-points."svdd_lightning.domains"]
      my_package = "my_package"

- :func:`trust` (``checkpoints.trust("my_package")``) or ``load(..., trusted_packages=["my_package"])``;
- ``--trusted_packages [my_package]`` on the ``train.py`` / ``decode.py`` command line or config.

Every refusal or damaged file is a ``ValueError`` (``FileNotFoundError`` for a missing file) with one
line naming the checkpoint, the file and the problem.
"""
from __future__ import annotations

import importlib
import inspect
import json
import re
from functools import lru_cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .paths import find
from .renamed import RENAMED

ENTRY_POINT_GROUP = "svdd_lightning.domains"
_EARLIER_GROUP = "svdd_lightning.checkpoints"  # the group's earlier name, still read for trust
CONFIG, WEIGHTS = "config.json", "model.safetensors"
_TRUSTED: set[str] = {"svdd_lightning"}
_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")


def trust(*packages: str) -> None:
    """Let checkpoints construct the :class:`Configurable` classes of ``packages`` (and their
    subpackages) in this process, e.g. ``trust("my_package")``."""
    for package in packages:
        if not isinstance(package, str) or not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", package):
            raise ValueError(f"trusted_packages: {package!r} is not a dotted package name like 'my_package'")
        _TRUSTED.add(package)


@lru_cache(maxsize=1)
def _entry_point_packages() -> frozenset[str]:
    """Packages that installed distributions declare (entry point group ``svdd_lightning.domains``)."""
    return frozenset(ep.module for group in (ENTRY_POINT_GROUP, _EARLIER_GROUP) for ep in entry_points(group=group))


def trusted_packages(extra: Iterable[str] = ()) -> frozenset[str]:
    """``svdd_lightning``, the packages given to :func:`trust`, those declared by entry points, and ``extra``."""
    return frozenset({*_TRUSTED, *_entry_point_packages(), *extra})


def _within(name: str, packages: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


class Configurable:
    """Mixin that records constructor arguments so that the object can be rebuilt from JSON."""

    def __new__(cls, *args: Any, **kwargs: Any):
        obj = super().__new__(cls)
        # bind_partial: copy and pickle create the object without arguments, then restore __dict__
        bound = inspect.signature(cls.__init__).bind_partial(None, *args, **kwargs)
        bound.apply_defaults()
        obj._init_args = {k: v for k, v in list(bound.arguments.items())[1:]}
        return obj

    def to_config(self) -> dict:
        cls = type(self)
        return {"class_path": f"{cls.__module__}.{cls.__qualname__}",
                "init_args": {k: _encode(v) for k, v in self._init_args.items()}}


def _encode(value: Any) -> Any:
    if isinstance(value, Configurable):
        return value.to_config()
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store constructor argument of type {type(value).__name__} in a checkpoint config")


def build(config: Any, trusted: Iterable[str] = (), source: str = "checkpoint config") -> Any:
    """Instantiate a (nested) ``{"class_path", "init_args"}`` config of loadable classes.

    A ``class_path`` must name a :class:`Configurable` class defined in a trusted package
    (:func:`trusted_packages` plus ``trusted``); anything else (a function, another object, a class of
    another package) is refused with one line that names ``source``.
    """
    packages = trusted_packages(trusted)
    if isinstance(config, list):
        return [build(v, packages, source) for v in config]
    if not isinstance(config, dict):
        return config
    if "class_path" not in config:
        return {k: build(v, packages, source) for k, v in config.items()}
    cls = loadable_class(config["class_path"], packages, source)
    init_args = config.get("init_args", {})
    if not isinstance(init_args, dict):
        raise ValueError(f"{source}: init_args of {config['class_path']} must be a mapping, got {type(init_args).__name__}")
    kwargs = {k: build(v, packages, source) for k, v in init_args.items()}
    try:
        inspect.signature(cls.__init__).bind(None, **kwargs)
    except TypeError as err:
        raise ValueError(f"{source}: init_args do not fit {config['class_path']}: {err}") from None
    return cls(**kwargs)


def _trust_rule(class_path: Any, packages: list[str], source: str) -> str:
    """Refuse (one-line ``ValueError``) a ``class_path`` that is not a dotted name within ``packages``,
    before anything is imported; returns how to trust another package, for later messages."""
    if not isinstance(class_path, str) or not _DOTTED.fullmatch(class_path):
        raise ValueError(f"{source}: class_path {class_path!r} is not a dotted name like 'package.module.Class'")
    how = (f"trusted packages: {', '.join(packages)}; trust another with checkpoints.trust('pkg'), "
           f"--trusted_packages or the entry point group {ENTRY_POINT_GROUP!r}")
    if not _within(class_path, packages):
        raise ValueError(f"{source}: class_path {class_path!r} is outside the trusted packages, refusing to import it "
                         f"({how})")
    return how


def check_trust(config: Any, trusted: Iterable[str] = (), source: str = "checkpoint config") -> None:
    """Apply the trust rule to every ``class_path`` of a (nested) config, before any other part of it is
    examined or anything is imported (:func:`loadable_class` checks the classes themselves)."""
    packages = sorted(trusted_packages(trusted))
    todo = [config]
    while todo:
        item = todo.pop()
        if isinstance(item, dict):
            if "class_path" in item:
                _trust_rule(item["class_path"], packages, source)
            todo.extend(item.values())
        elif isinstance(item, list):
            todo.extend(item)


def loadable_class(class_path: Any, packages: Iterable[str], source: str = "checkpoint config") -> type:
    """The class ``class_path`` names, if checkpoints may construct it; else a one-line ``ValueError``."""
    packages = sorted(packages)
    class_path = RENAMED.get(class_path, class_path)  # a checkpoint written before a class moved
    how = _trust_rule(class_path, packages, source)
    module_name, _, name = class_path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"{source}: class_path {class_path!r}: cannot import {module_name} ({err})") from None
    cls = getattr(module, name, None)
    if cls is None:
        raise ValueError(f"{source}: class_path {class_path!r}: {module_name} has no {name!r}")
    if not (inspect.isclass(cls) and issubclass(cls, Configurable)):
        kind = "function" if callable(cls) and not inspect.isclass(cls) else "class" if inspect.isclass(cls) else "object"
        raise ValueError(f"{source}: class_path {class_path!r} names a {kind} that is not a loadable Configurable class; "
                         f"a checkpoint can only construct Configurable classes, it never calls functions")
    if not _within(cls.__module__, packages):
        raise ValueError(f"{source}: class_path {class_path!r} is {cls.__module__}.{cls.__qualname__}, which is outside "
                         f"the trusted packages ({how})")
    return cls


def save(module: nn.Module, directory: str | Path, metadata: dict | None = None) -> Path:
    """Write ``config.json`` and ``model.safetensors`` for a :class:`Configurable` module."""
    if not isinstance(module, Configurable):
        raise TypeError(f"{type(module).__name__} is not Configurable: it cannot be rebuilt from a config")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = module.to_config()
    if metadata:
        config["metadata"] = metadata
    (directory / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    save_file(state, str(directory / WEIGHTS))
    return directory


def load(directory: str | Path, map_location: str | torch.device = "cpu", overrides: dict | None = None,
         trusted_packages: Iterable[str] = ()) -> nn.Module:
    """Rebuild a module saved with :func:`save`; it comes back in eval mode.

    ``overrides`` replaces top-level constructor arguments that hold no weights, e.g.
    ``{"num_steps": 200}`` to sample a diffusion model on a coarser time grid; a string given for a
    number or a boolean (as from a command line) is converted like the stored value.
    ``trusted_packages`` adds packages whose classes this call may construct (see :func:`trust`).
    """
    directory = find(directory)
    config = read_config(directory)
    config.pop("metadata", None)
    source = f"checkpoint {directory}: config.json"
    check_trust(config, trusted_packages, source)
    if overrides:
        known = config.get("init_args", {})
        unknown = sorted(set(overrides) - set(known))
        if unknown:
            raise ValueError(f"model_args: {unknown} are not constructor arguments of {config['class_path']}; "
                             f"known: {sorted(known)}")
        config["init_args"] = {**known, **{k: _like(v, known[k], k) for k, v in overrides.items()}}
    module = build(config, trusted_packages, source=source)
    if not isinstance(module, nn.Module):
        raise ValueError(f"checkpoint {directory}: config.json builds a {type(module).__name__}, not a torch module")
    load_weights(module, directory / WEIGHTS, map_location)
    return module.eval()


def read_config(directory: str | Path) -> dict:
    """The parsed ``config.json`` of a checkpoint directory that also holds ``model.safetensors`` (found
    as given, else among the shipped files: :func:`svdd_lightning.paths.find`)."""
    directory = find(directory)
    if directory.is_file():
        raise ValueError(f"checkpoint {directory}: is a file; a checkpoint is a directory holding {CONFIG} and "
                         f"{WEIGHTS} (svdd_lightning.checkpoints.save or the export of train.py fit)")
    for name in (CONFIG, WEIGHTS):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"checkpoint {directory}: missing {name} (expected a directory written by "
                                    f"svdd_lightning.checkpoints.save or the export of train.py fit)")
    try:
        config = json.loads((directory / CONFIG).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"checkpoint {directory}: {CONFIG} is not valid JSON ({err})") from None
    if not isinstance(config, dict) or "class_path" not in config:
        raise ValueError(f"checkpoint {directory}: {CONFIG} has no top-level class_path")
    return config


def read_weights(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a damaged file is a one-line ``ValueError`` naming it."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint weights {path}: no such file")
    try:
        return load_file(str(path), device=str(map_location))
    except (SafetensorError, OSError) as err:
        detail = " ".join(str(err).split()) or type(err).__name__
        raise ValueError(f"checkpoint weights {path} are not a readable safetensors file ({detail}); "
                         f"re-export or copy the checkpoint again") from None


def load_weights(module: nn.Module, path: str | Path, map_location: str | torch.device = "cpu") -> None:
    """Load a safetensors file into ``module`` strictly, with one line saying what does not fit."""
    weights = read_weights(path, map_location)
    expected = module.state_dict()
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    shapes = [f"{k}: file {tuple(weights[k].shape)}, model {tuple(v.shape)}" for k, v in expected.items()
              if k in weights and weights[k].shape != v.shape]
    if missing or unexpected or shapes:
        problems = [f"{len(items)} {what} (e.g. {items[0]})" for items, what in
                    ((missing, "tensors missing"), (unexpected, "unexpected tensors"), (shapes, "tensors of another shape"))
                    if items]
        raise ValueError(f"checkpoint weights {path} do not fit {type(module).__name__} built from its config.json: "
                         f"{'; '.join(problems)}")
    module.load_state_dict(weights)


def copy_ema_shadow(params: list[nn.Parameter], ema: Any, source: str, exact: bool = True, fix: str = "") -> None:
    """Copy a published training checkpoint's EMA (``{"decay", "num_updates", "shadow_params"}``, the shadow
    list following the parameters' registration order, as MDLM and GDSS save it) into ``params``.

    ``exact``: the list must have one tensor per parameter (otherwise extra trailing tensors are allowed).
    A count or shape that does not fit is a one-line ``ValueError`` naming ``source``, ending with ``fix``.
    """
    shadow = ema.get("shadow_params") if isinstance(ema, Mapping) else None
    count = len(shadow) if isinstance(shadow, list | tuple) else 0
    if count < len(params) or (exact and count != len(params)):
        raise ValueError(f"{source} holds {count} shadow params, the network has {len(params)}{fix}")
    for i, (param, value) in enumerate(zip(params, shadow)):
        if tuple(value.shape) != tuple(param.shape):
            raise ValueError(f"{source} shadow param {i} has shape {tuple(value.shape)}, expected {tuple(param.shape)}")
    with torch.no_grad():
        for param, value in zip(params, shadow):
            param.copy_(value)


def _like(value: Any, stored: Any, name: str) -> Any:
    """An override as the stored value's type when it came as a string (``--model.model_args.num_steps 32``)."""
    if not isinstance(value, str) or isinstance(stored, str) or stored is None:
        return value
    try:
        if isinstance(stored, bool):
            if value.lower() not in ("true", "false"):
                raise ValueError
            return value.lower() == "true"
        if isinstance(stored, int):
            return int(value)
        if isinstance(stored, float):
            return float(value)
    except ValueError:
        kind = "true or false" if isinstance(stored, bool) else "an integer" if isinstance(stored, int) else "a number"
        raise ValueError(f"model_args.{name}: expected {kind} like the checkpoint's {stored!r}, got {value!r}") from None
    return value


def metadata(directory: str | Path) -> dict:
    """The ``metadata`` block of a checkpoint config (training figures, data sources)."""
    return read_config(directory).get("metadata", {})


def warm_start(module: nn.Module, directory: str | Path) -> dict[str, int]:
    """Initialise ``module`` from the weights of a saved checkpoint where they fit.

    A parameter of the same name and shape is copied; one whose shape only grew (e.g. an input
    layer given an extra [MASK] channel) gets the old weights in its leading slice and keeps zeros
    elsewhere. Returns how many tensors were copied whole, copied into a slice, and left as they were.
    """
    source = read_weights(find(directory) / WEIGHTS)
    counts = {"copied": 0, "sliced": 0, "kept": 0}
    with torch.no_grad():
        for name, target in module.state_dict().items():
            weights = source.get(name)
            if weights is not None and weights.shape == target.shape:
                target.copy_(weights)
                counts["copied"] += 1
            elif (weights is not None and weights.dim() == target.dim()
                  and all(a <= b for a, b in zip(weights.shape, target.shape))):
                target.zero_()[tuple(slice(0, n) for n in weights.shape)].copy_(weights)
                counts["sliced"] += 1
            else:
                counts["kept"] += 1
    return counts
