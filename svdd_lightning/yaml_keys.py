"""YAML configs read strictly: a mapping that gives a key twice is refused in one line, not resolved by
letting the last one win, and so is a class path that was renamed (naming the new one). Used for every
config ``train.py``, ``decode.py`` and ``finetune.py`` read."""
from __future__ import annotations

from typing import Any, Callable

import jsonargparse
import yaml

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


def _cli_load(value: str, path: str = "") -> Any:
    """jsonargparse's YAML loader, refusing a duplicate key; names the config file being read (as given on
    the command line or in the config that includes it), else the basename jsonargparse passes."""
    stack = getattr(getattr(jsonargparse, "_util", None), "config_load_stack", None)
    loading = stack.get() if stack is not None else ()
    name = loading[-1][1] if loading else str(path) or "command-line value"
    check_unique_keys(value, name)
    loaded = _JSONARGPARSE_YAML(value)
    refuse_renamed((name, text) for text in _strings(loaded))
    return loaded


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
