"""YAML configs read strictly, and composed from shared pieces.

A mapping that gives a key twice is refused in one line, not resolved by letting the last one win, and so
is a class path that was renamed (naming the new one). A config may start from other configs: its
``defaults`` lists them (relative to its own folder, else found as any input path is); they are composed
in order (:func:`compose`) with the config's own settings last, or where the list names ``_self_``. Used
for every config ``train.py``, ``decode.py`` and ``finetune.py`` read."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable

import jsonargparse
import yaml

from .paths import find
from .renamed import refuse_renamed

_JSONARGPARSE_YAML: Callable[[str], Any] = jsonargparse.get_loader("yaml")


class DuplicateKeyError(ValueError):
    """A YAML mapping gives the same key twice."""


def check_unique_keys(text: str, name: str) -> None:
    """Raise :class:`DuplicateKeyError` naming the key, ``name`` and both lines when a mapping of the YAML
    ``text`` repeats a key. Only composes the document (nothing is constructed), so it judges any text
    a YAML loader accepts; a syntax error is left to that loader to report."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return
    todo, seen = [root], set()
    while todo:
        node = todo.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            lines: dict[tuple[str, str], int] = {}
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value != "<<":
                    line = key.start_mark.line + 1
                    first = lines.setdefault((key.tag, key.value), line)
                    if first != line:
                        raise DuplicateKeyError(f"{name}: key {key.value!r} appears twice (lines {first} and "
                                                f"{line}); keep one")
                todo.extend((key, value))
        elif isinstance(node, yaml.SequenceNode):
            todo.extend(node.value)


def safe_load(text: str, name: str) -> Any:
    """``yaml.safe_load(text)``, refusing a duplicate key (:func:`check_unique_keys`)."""
    check_unique_keys(text, name)
    return yaml.safe_load(text)


DEFAULTS = "defaults"
SELF = "_self_"  # in a defaults list: where the config's own settings go


def compose(base: dict, overlay: dict) -> dict:
    """``overlay``'s settings over ``base``'s, nested dicts merged key by key; a dict whose ``class_path``
    differs from the base's replaces it whole (its ``init_args`` belong to another class); lists replace."""
    merged = copy.deepcopy(base)
    for key, value in overlay.items():
        old = merged.get(key)
        if (isinstance(old, dict) and isinstance(value, dict)
                and value.get("class_path", old.get("class_path")) == old.get("class_path")):
            merged[key] = compose(old, value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def with_defaults(settings: Any, path: Path, name: str, reading: tuple[Path, ...] = ()) -> Any:
    """The config ``settings`` read from ``path`` composed from the configs its ``defaults`` lists (each
    relative to ``path``'s folder, else the working directory or the shipped configs; read by
    :func:`read_config`) in order, its own settings last or where the list names ``_self_``; other documents
    as they are."""
    if not isinstance(settings, dict) or DEFAULTS not in settings:
        return settings
    pieces = settings[DEFAULTS]
    if not isinstance(pieces, list) or not all(isinstance(piece, str) for piece in pieces):
        raise ValueError(f"{name}: {DEFAULTS} must be a list of config files (relative to the config's folder), "
                         f"got {pieces!r}")
    own = {key: value for key, value in settings.items() if key != DEFAULTS}
    composed: dict = {}
    for piece in pieces if SELF in pieces else [*pieces, SELF]:
        composed = compose(composed, own if piece == SELF else
                           read_config(_piece_path(path, piece), f"{name} -> {piece}", (*reading, path)))
    return composed


def _piece_path(config: Path, piece: str) -> Path:
    """A ``defaults`` entry: relative to the config's folder, else found as every input path is (the working
    directory, then the shipped configs: ``configs/methods/svdd_pm.yaml`` works from any folder)."""
    beside = config.parent / piece
    return beside if beside.exists() else find(piece)


def read_config(path: str | Path, name: str | None = None, reading: tuple[Path, ...] = ()) -> Any:
    """A config file read strictly (:func:`safe_load`, renamed class paths refused) and composed over its
    ``defaults``; ``name`` is how errors name it (default: the path)."""
    path = Path(path)
    name = name or str(path)
    if path.resolve() in {p.resolve() for p in reading}:
        raise ValueError(f"{name}: {DEFAULTS} includes itself")
    if not path.is_file():
        raise FileNotFoundError(f"{name}: no config file {path}")
    settings = safe_load(path.read_text(), name)
    refuse_renamed((name, text) for text in _strings(settings))
    return with_defaults(settings, path, name, reading)


def _cli_load(value: str, path: str = "") -> Any:
    """jsonargparse's YAML loader, refusing a duplicate key and composing a config file over its
    ``defaults``; names the config file being read (as given on the command line or in the config that
    includes it), else the basename jsonargparse passes."""
    stack = getattr(getattr(jsonargparse, "_util", None), "config_load_stack", None)
    loading = stack.get() if stack is not None else ()
    name = loading[-1][1] if loading else str(path) or "command-line value"
    check_unique_keys(value, name)
    loaded = _JSONARGPARSE_YAML(value)
    refuse_renamed((name, text) for text in _strings(loaded))
    return with_defaults(loaded, Path(loading[-1][0]), name) if loading else loaded


def _strings(data: Any) -> list[str]:
    """Every string value in loaded YAML (class paths, function paths)."""
    if isinstance(data, str):
        return [data]
    if isinstance(data, dict):
        return [s for value in data.values() for s in _strings(value)]
    if isinstance(data, list):
        return [s for value in data for s in _strings(value)]
    return []


def refuse_duplicate_keys() -> None:
    """Make jsonargparse (hence LightningCLI) read every YAML config and value with :func:`_cli_load`."""
    jsonargparse.set_loader("yaml", _cli_load, exceptions=(yaml.YAMLError,))
