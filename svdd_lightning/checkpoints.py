"""Safe checkpoints: weights in safetensors, the constructor in JSON, no pickled code.

A checkpoint directory holds ``config.json`` (``{"class_path": ..., "init_args": ...}``, nested for
sub-modules) and ``model.safetensors``. Only classes of this package can be named, so a checkpoint
file cannot run code.
"""
from __future__ import annotations

import importlib
import inspect
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .paths import find

PACKAGE = "svdd_lightning."


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


def build(config: Any) -> Any:
    """Instantiate a (nested) ``{"class_path", "init_args"}`` config of this package's classes."""
    if isinstance(config, list):
        return [build(v) for v in config]
    if not isinstance(config, dict):
        return config
    if "class_path" not in config:
        return {k: build(v) for k, v in config.items()}
    path = config["class_path"]
    if not path.startswith(PACKAGE):
        raise ValueError(f"checkpoint config: class_path {path!r} is outside {PACKAGE[:-1]}; refusing to import it")
    module, _, name = path.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    return cls(**{k: build(v) for k, v in config.get("init_args", {}).items()})


def save(module: nn.Module, directory: str | Path, metadata: dict | None = None) -> Path:
    """Write ``config.json`` and ``model.safetensors`` for a :class:`Configurable` module."""
    if not isinstance(module, Configurable):
        raise TypeError(f"{type(module).__name__} is not Configurable: it cannot be rebuilt from a config")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = module.to_config()
    if metadata:
        config["metadata"] = metadata
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    save_file(state, str(directory / "model.safetensors"))
    return directory


def load(directory: str | Path, map_location: str | torch.device = "cpu", overrides: dict | None = None) -> nn.Module:
    """Rebuild a module saved with :func:`save`; it comes back in eval mode.

    ``overrides`` replaces top-level constructor arguments that hold no weights, e.g.
    ``{"num_steps": 200}`` to sample a diffusion model on a coarser time grid.
    """
    directory = find(directory)
    config_path, weights_path = directory / "config.json", directory / "model.safetensors"
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {directory}: missing {path.name} (expected a directory written by "
                                    f"svdd_lightning.checkpoints.save or the export of train.py fit)")
    config = json.loads(config_path.read_text())
    config.pop("metadata", None)
    if overrides:
        unknown = sorted(set(overrides) - set(config.get("init_args", {})))
        if unknown:
            raise ValueError(f"model_args: {unknown} are not constructor arguments of {config['class_path']}; "
                             f"known: {sorted(config.get('init_args', {}))}")
        config["init_args"] = {**config["init_args"], **overrides}
    module = build(config)
    module.load_state_dict(load_file(str(weights_path), device=str(map_location)))
    return module.eval()


def metadata(directory: str | Path) -> dict:
    """The ``metadata`` block of a checkpoint config (training figures, data sources)."""
    return json.loads((find(directory) / "config.json").read_text()).get("metadata", {})


def warm_start(module: nn.Module, directory: str | Path) -> dict[str, int]:
    """Initialise ``module`` from the weights of a saved checkpoint where they fit.

    A parameter of the same name and shape is copied; one whose shape only grew (e.g. an input
    layer given an extra [MASK] channel) gets the old weights in its leading slice and keeps zeros
    elsewhere. Returns how many tensors were copied whole, copied into a slice, and left as they were.
    """
    source = load_file(str(find(directory) / "model.safetensors"))
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
