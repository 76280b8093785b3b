"""Timing and memory measurement: repeated runs, medians and spreads, peak RSS growth."""

from __future__ import annotations

import contextlib
import gc
import os
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field


@dataclass
class Samples:
    """Repeated measurements of one quantity (seconds, ratios or bytes)."""

    values: list[float] = field(default_factory=list)

    def add(self, value: float) -> None:
        self.values.append(float(value))

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    @property
    def low(self) -> float:
        return min(self.values) if self.values else float("nan")

    @property
    def high(self) -> float:
        return max(self.values) if self.values else float("nan")

    def to_json(self) -> dict:
        return {"median": self.median, "min": self.low, "max": self.high, "n": len(self.values),
                "values": self.values}


def timed(func: Callable[[], object]) -> tuple[float, object]:
    """(seconds, result) of one call (see :func:`quiet_gc` to keep collections out of it)."""
    start = time.perf_counter()
    result = func()
    return time.perf_counter() - start, result


def timed_cpu(func: Callable[[], object]) -> tuple[float, float, object]:
    """(wall seconds, CPU seconds of the whole process, all threads, user + system, result).

    On a machine where processes wait for a core most of the time, CPU time says how much work
    an operation is; wall time (what a user feels) adds the waits for a core and for the disk.
    """
    cpu = time.process_time()
    start = time.perf_counter()
    result = func()
    return time.perf_counter() - start, time.process_time() - cpu, result


@contextlib.contextmanager
def quiet_gc() -> Iterator[None]:
    """Collect garbage once, then keep the cyclic collector off: a full collection with Keras
    models alive takes most of a second and would land inside whichever call triggered it.
    """
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def peak_rss_growth(func: Callable[[], object]) -> tuple[int | None, float, object]:
    """(peak RSS growth in bytes or None where unmeasurable, seconds, result) of one call.

    Linux only: the kernel's high-water mark is reset to the current RSS through
    ``/proc/self/clear_refs`` before the call and read back after it.
    """
    gc.collect()
    _release_free_heap()
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        before = _status_kib("VmRSS")
    except OSError:
        before = None
    seconds, result = timed(func)
    if before is None:
        return None, seconds, result
    return (_status_kib("VmHWM") - before) * 1024, seconds, result


def _release_free_heap() -> None:
    """Give freed heap memory back to the kernel (glibc keeps it, and it would then count as
    resident before the call and hide the call's own growth)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def dir_bytes(path: str | os.PathLike) -> int:
    """Bytes of every file under ``path`` (as stored: apparent sizes)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total
