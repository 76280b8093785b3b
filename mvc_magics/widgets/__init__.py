"""ipywidgets panels over the API (``pip install mvc_magics[widgets]``).

Panels only display API results and call the API from their handlers; the logic lives in the
core. Importing this package does not import ipywidgets; the panel classes load on first use.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

# Panel class -> module in this package (issue 4 adds merge_panel.py beside compare_panel.py).
_PANELS = {"ComparePanel": "compare_panel", "MergePanel": "merge_panel"}

__all__ = ["ComparePanel", "MergePanel", "widgets_available"]


def __getattr__(name: str) -> Any:
    if name in _PANELS:
        module = importlib.import_module(f".{_PANELS[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def widgets_available(shell: Any = None) -> bool:
    """True when ipywidgets is installed and ``shell`` is a kernel that can show widgets.

    A terminal IPython (or a plain ``InteractiveShell``) has no widget frontend: callers fall
    back to text there.
    """
    if importlib.util.find_spec("ipywidgets") is None:
        return False
    if shell is None:
        return True
    return getattr(shell, "kernel", None) is not None
