"""Optional dependencies: the core needs none; each domain names the extra that installs its own."""
from __future__ import annotations

import importlib.util

#: the distribution that provides an import name, where the two differ
DISTRIBUTIONS = {"RNA": "ViennaRNA", "PIL": "pillow", "torch_geometric": "torch-geometric"}


def available(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or the module blocked in sys.modules
        return False


def require(*modules: str, extra: str, feature: str) -> None:
    """Raise a one-line ImportError naming the extra when one of ``modules`` is not installed."""
    missing = [m for m in modules if not available(m)]
    if missing:
        names = ", ".join(DISTRIBUTIONS.get(m, m) for m in missing)
        raise ImportError(f"{feature} needs {names}, which is not installed: install the "
                          f"'{extra}' extra (pip install \"svdd-lightning[{extra}]\"; from a clone: "
                          f"pip install \".[{extra}]\")")
