"""What a decoding run's results depend on, as JSON: the settings recorded in a run's output folder.

:func:`describe` turns the objects of a run (model, reward, decoder, metrics) into plain data: a
:class:`~svdd_lightning.checkpoints.Configurable` by its config, a torch module also by a digest of
its weights (so a model retrained into the same folder is told apart), a function by its name, and
any other object by its class and those of its attributes that are named like its constructor's
arguments, plus the torch modules it holds (a reward's oracle network). Arguments that only decide
how work is split (``processes``, ``batch_size``, ``chunk_size``, ...) are left out: they do not
change a sample.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import math
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoints import Configurable

RUNTIME_ARGUMENTS = frozenset({"processes", "batch_size", "chunk_size", "num_workers", "min_chunk", "name"})
_MAX_DEPTH = 8


def describe(obj: Any, _digests: dict[int, str] | None = None, _depth: int = 0) -> Any:
    """Plain JSON data standing for ``obj``'s settings (see the module docstring)."""
    digests = {} if _digests is None else _digests
    if _depth > _MAX_DEPTH:
        return {"class": _name(type(obj))}
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else repr(obj)
    if isinstance(obj, (Path, torch.device, torch.dtype, Enum)):
        return str(obj)
    if isinstance(obj, (list, tuple)):
        return [describe(v, digests, _depth + 1) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted((describe(v, digests, _depth + 1) for v in obj), key=repr)
    if isinstance(obj, dict):
        return {str(k): describe(v, digests, _depth + 1) for k, v in obj.items()}
    if isinstance(obj, torch.Tensor):
        return {"tensor": list(obj.shape), "dtype": str(obj.dtype), "digest": tensor_digest({"": obj})}
    if inspect.isfunction(obj) or inspect.isbuiltin(obj) or inspect.isclass(obj):
        return {"function": _name(obj)}
    if inspect.ismethod(obj):
        return {"method": obj.__func__.__qualname__, "of": describe(obj.__self__, digests, _depth + 1)}
    entry: dict[str, Any] = {"class": _name(type(obj))}
    if isinstance(obj, Configurable):
        entry["init_args"] = obj.to_config()["init_args"]
    else:
        for key in _constructor_arguments(type(obj)):
            try:
                value = getattr(obj, key)
            except Exception:  # a property that cannot be read here
                continue
            entry[key] = describe(value, digests, _depth + 1)
    if isinstance(obj, nn.Module):
        if id(obj) not in digests:
            digests[id(obj)] = tensor_digest(obj.state_dict())
        entry["weights"] = digests[id(obj)]
    else:
        for key, value in sorted(vars(obj).items()) if hasattr(obj, "__dict__") else ():
            if isinstance(value, nn.Module) and key not in entry:
                entry[key] = describe(value, digests, _depth + 1)
    return entry


def _name(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def _constructor_arguments(cls: type) -> list[str]:
    try:
        params = inspect.signature(cls.__init__).parameters.values()
    except (TypeError, ValueError):
        return []
    return [p.name for p in params if p.name != "self" and p.name not in RUNTIME_ARGUMENTS
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """A digest of named tensors' names, dtypes, shapes and bytes."""
    h = hashlib.blake2b(digest_size=12)
    for key in sorted(tensors):
        t = tensors[key].detach()
        h.update(f"{key}:{t.dtype}:{tuple(t.shape)};".encode())
        if t.numel():
            h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def digest(settings: Any) -> str:
    """A short digest of JSON settings."""
    return hashlib.blake2b(json.dumps(settings, sort_keys=True).encode(), digest_size=8).hexdigest()


def differences(old: Any, new: Any, limit: int = 3) -> str:
    """The settings that differ, as ``key: old -> new`` (at most ``limit``, then a count)."""
    a, b = _flatten(old), _flatten(new)
    keys = [k for k in dict.fromkeys([*a, *b]) if a.get(k, _MISSING) != b.get(k, _MISSING)]
    shown = [f"{k or '(settings)'}: {_short(a.get(k, _MISSING))} -> {_short(b.get(k, _MISSING))}" for k in keys[:limit]]
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return "; ".join(shown) + more


_MISSING = object()


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(value, list) and value and any(isinstance(v, (dict, list)) for v in value):
        out = {}
        for i, v in enumerate(value):
            out.update(_flatten(v, f"{prefix}.{i}" if prefix else str(i)))
        return out
    return {prefix: value}


def _short(value: Any) -> str:
    if value is _MISSING:
        return "(none)"
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."
