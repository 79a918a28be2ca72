"""Names that moved: an old class path in a config, a checkpoint or an import gets one line naming the new one."""
from __future__ import annotations

import re
from typing import Iterable

#: old dotted name -> new dotted name
RENAMED: dict[str, str] = {
    "svdd_lightning.RewardFunction": "svdd_lightning.Reward",
    "svdd_lightning.core.reward.RewardFunction": "svdd_lightning.core.reward.Reward",
    "svdd_lightning.as_reward": "svdd_lightning.core.reward.guard",
    "svdd_lightning.core.reward.as_reward": "svdd_lightning.core.reward.guard",
}
_DOTTED = re.compile(r"svdd_lightning(?:\.\w+)+")


def message(old: str) -> str:
    """The one line for a moved name."""
    return f"{old} was renamed {RENAMED[old]}: use the new name"


def refuse_renamed(texts: Iterable[tuple[str, str]]) -> None:
    """Raise ``ValueError`` (one line) for the first moved name in ``(where, text)`` pairs (config files,
    command-line values)."""
    for where, text in texts:
        for name in _DOTTED.findall(text):
            if name in RENAMED:
                raise ValueError(f"{where}: {message(name)}")


def module_getattr(module: str, name: str):
    """For a module's ``__getattr__``: an ImportError naming the new name of a moved one."""
    old = f"{module}.{name}"
    if old in RENAMED:
        raise ImportError(message(old))
    raise AttributeError(f"module {module!r} has no attribute {name!r}")
