"""Where shipped files are found: checkpoints, assets and configs from any working directory.

An input path (a checkpoint directory, an asset, a config file) is read relative to the working
directory first; when nothing is there, relative to the *shipped root*: the copy of ``checkpoints/``,
``assets/`` and ``configs/`` installed with the package (``svdd_lightning/_shipped``, in a wheel) or,
in a source checkout or an editable install, the repository root. Output paths (``--output_dir``,
``ExportBest.directory``, rollout caches) are never redirected: they stay relative to the working
directory, so a run cannot overwrite a shipped model.
"""
from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
SHIPPED = ("checkpoints", "assets", "configs")


def shipped_root() -> Path | None:
    """The directory holding the shipped ``checkpoints/``, ``assets/`` and ``configs/``, or None."""
    for root in (PACKAGE_DIR / "_shipped", PACKAGE_DIR.parent):
        if any((root / name).is_dir() for name in SHIPPED):
            return root
    return None


def find(path: str | Path) -> Path:
    """``path`` as given if it exists (or is absolute), else its shipped copy if there is one, else as given
    (so that the caller's own error names the path the user wrote)."""
    given = Path(path).expanduser()
    if given.is_absolute() or given.exists():
        return given
    root = shipped_root()
    if root is not None and (root / given).exists():
        return root / given
    return given
