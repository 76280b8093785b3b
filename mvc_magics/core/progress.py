"""Progress bars for operations that take long enough to wonder about (large commits and checkouts).

A bar appears only once an operation has run for :data:`DELAY_SECONDS` (tqdm's ``delay``), so
small models stay quiet. ``MVC_PROGRESS=0`` turns bars off, ``MVC_PROGRESS=1`` shows them at once.
In a notebook (IPython already imported) the bar is a widget; on a terminal it is text on stderr;
into a pipe or a log file there is none (its redraws would stay there as fragments).
"""

from __future__ import annotations

import os
import sys
from typing import Any

DELAY_SECONDS = 1.0


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def interactive() -> bool:
    """True where a bar is read as it redraws: a terminal on stderr, or a Jupyter kernel (a
    widget). A pipe or a log file would keep every redraw as a fragment of text."""
    if "ipykernel" in sys.modules:
        return True
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stderr
        return False


def user_stacklevel() -> int:
    """The ``stacklevel`` of the first caller outside mvc_magics and IPython's magic machinery, so
    a warning names the user's line (their script, or the notebook cell), not ours."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    frame, level = sys._getframe(1), 1
    while frame is not None:
        name = frame.f_code.co_filename
        if not (name.startswith(package) or name.startswith("<decorator-gen") or f"{os.sep}IPython{os.sep}" in name):
            return level
        frame, level = frame.f_back, level + 1
    return 1


def progress_bar(total_bytes: int, description: str, enabled: bool | None = None) -> Any:
    """A context manager with ``update(nbytes)``: a tqdm bar in bytes, or a silent stand-in.

    ``enabled``: True shows the bar at once, False never, None (default) after
    :data:`DELAY_SECONDS` unless ``MVC_PROGRESS`` says otherwise.
    """
    if enabled is None:
        setting = os.environ.get("MVC_PROGRESS", "").strip().lower()
        if setting in ("0", "false", "no", "off"):
            enabled = False
        elif setting in ("1", "true", "yes", "on"):
            enabled = True
    if enabled is False or (enabled is None and not interactive()):
        return _NoBar()
    try:
        if "IPython" in sys.modules:
            from tqdm.auto import tqdm
        else:
            from tqdm import tqdm
    except ImportError:  # tqdm is a dependency; a broken install must not block a commit
        return _NoBar()
    return tqdm(total=total_bytes, desc=description, unit="B", unit_scale=True, unit_divisor=1024,
                delay=0 if enabled else DELAY_SECONDS, leave=False)
