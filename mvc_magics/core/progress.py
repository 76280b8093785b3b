"""Progress bars for operations that take long enough to wonder about (large commits and checkouts).

A bar appears only once an operation has run for :data:`DELAY_SECONDS` (tqdm's ``delay``), so
small models stay quiet. ``MVC_PROGRESS=0`` turns bars off, ``MVC_PROGRESS=1`` shows them at once.
In a notebook (IPython already imported) the bar is a widget; elsewhere it is text on stderr.
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
    if enabled is False:
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
