"""Ctrl-C held back while a model is being overwritten, so it never stops half old, half new.

A checkout may be refused (a damaged tensor, a shape the model does not have) until the model has
accepted the version; from then on it only copies. An interrupt (SIGINT, Ctrl-C in a notebook)
arriving during that copy is held and raised once the copy is done: the model holds the whole
version and its HEAD moved, rather than some tensors of each. Signals are only handled on the main
thread, so elsewhere the block runs as it is.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """Run the block with SIGINT held; one that arrived meanwhile is delivered when it ends (to the
    handler that was there before: Python's raises :class:`KeyboardInterrupt`)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[tuple[int, FrameType | None]] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        received.append((signum, frame))

    try:
        previous = signal.signal(signal.SIGINT, hold)
    except (ValueError, OSError):  # no signal handling here (an embedded interpreter)
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            if callable(previous):
                previous(*received[0])
            elif previous == signal.SIG_DFL:
                os.kill(os.getpid(), signal.SIGINT)
