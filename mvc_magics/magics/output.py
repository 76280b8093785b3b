"""Rich or text output: one decision every magic uses (``%config MVCMagics.output``).

``auto`` gives widgets (or HTML when ipywidgets is missing) in a Jupyter kernel, and plain text in a
terminal IPython or a plain ``InteractiveShell``: no widget models, HTML or figures where nothing can
show them. ``widget``, ``html`` and ``text`` force a mode (``widget`` falls back to ``html`` without
ipywidgets).
"""

from __future__ import annotations

import importlib.util
from typing import Any, Literal

from ..plots.charts import FigureImage
from ..plots.graph import plot_graph, text_graph

OutputMode = Literal["widget", "html", "text"]
OUTPUT_CHOICES = ("auto", "widget", "html", "text")


def configured_output(shell: Any) -> str:
    """The ``MVCMagics.output`` option of ``shell`` (``auto`` when the magics are not loaded)."""
    magics = getattr(getattr(shell, "magics_manager", None), "registry", {}).get("MVCMagics")
    return getattr(magics, "output", "auto") or "auto"


def in_kernel(shell: Any) -> bool:
    """True in a Jupyter kernel (a frontend that renders HTML, figures and widgets)."""
    if shell is None:
        return False
    if getattr(shell, "kernel", None) is not None:
        return True
    return any(cls.__name__ == "ZMQInteractiveShell" for cls in type(shell).__mro__)


def output_mode(shell: Any, configured: str | None = None) -> OutputMode:
    """How to show results in ``shell``: ``widget``, ``html`` or ``text`` (see the module doc)."""
    choice = configured if configured is not None else configured_output(shell)
    if choice not in OUTPUT_CHOICES:
        raise ValueError(f"output must be one of {', '.join(OUTPUT_CHOICES)}, not {choice!r}")
    if choice == "auto":
        choice = "widget" if in_kernel(shell) else "text"
    if choice == "widget" and importlib.util.find_spec("ipywidgets") is None:
        return "html"
    return choice  # type: ignore[return-value]


def is_rich(shell: Any) -> bool:
    """True when HTML, figures or widgets can be shown (mode ``widget`` or ``html``)."""
    return output_mode(shell) != "text"



def show_graph(shell: Any, versions: Any) -> None:
    """Show the version graph: a PNG figure when rich output is possible, else text."""
    if not is_rich(shell):
        print(text_graph(versions))
        return
    from IPython.display import display
    from matplotlib.figure import Figure

    # A bare Figure (no pyplot: no global state, nothing shown twice) rendered to PNG, so the
    # graph appears whatever matplotlib backend the kernel uses.
    figure = Figure(figsize=(9, max(2.0, 0.45 * len(versions) + 1)))
    plot_graph(versions, ax=figure.subplots())
    display(FigureImage(figure, f"version graph ({len(versions)} versions)"))
