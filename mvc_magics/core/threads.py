"""The process's named thread pools, shared by every part that hands work to threads.

Each pool is made on first use and made again in a forked child (the child's copy of a parent's
pool has no threads): starting threads anew for every commit cost ~3 ms of a 20 ms small commit.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

_POOLS: dict[str, tuple[int, ThreadPoolExecutor]] = {}
T = TypeVar("T")


def thread_pool(name: str, workers: int) -> ThreadPoolExecutor:
    """The process's pool of ``workers`` threads called ``name`` (threads named ``mvc-<name>``)."""
    pid, pool = _POOLS.get(name, (None, None))
    if pool is None or pid != os.getpid():
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"mvc-{name}")
        _POOLS[name] = (os.getpid(), pool)
    return pool


class Task(Generic[T]):
    """A call handed to a pool that the caller may still run itself while no worker has started it.

    On this 2-core VM a worker woken for a task often sat in the run queue for 3-6 ms (both
    workers woken onto one core, the other core idle) while the caller only waited: a Dense 31 MB
    checkout's hashing took ~12 ms of wall for ~6 ms of each thread's CPU. A caller that runs the
    tasks no worker has started (:meth:`run_here_if_waiting`, from the last back) keeps both cores busy.
    """

    def __init__(self, pool: ThreadPoolExecutor | None, function: Callable[..., T], *args: object) -> None:
        """``pool`` None: a call no worker is given, run by the caller in :func:`run_waiting` (its
        share of work the pool's tasks share out, so it joins them instead of taking one over)."""
        self._function, self._args, self._pool_less = function, args, pool is None
        self._future: Future = pool.submit(function, *args) if pool is not None else Future()
        self._here: Future | None = None  # the outcome when this thread ran it

    def run_here_if_waiting(self) -> None:
        """Run the call on this thread if no worker has started it (its outcome kept for :meth:`result`)."""
        if self._here is None and self._future.cancel():
            here: Future = Future()
            try:
                here.set_result(self._function(*self._args))
            except Exception as exc:  # raised by result(), in the order the caller asks (Ctrl-C: now)
                here.set_exception(exc)
            self._here = here

    def result(self) -> T:
        """The call's result (waiting for its worker), or its error raised. A call given to no
        pool that nobody ran yet runs here (nothing else ever would)."""
        if self._pool_less and self._here is None:
            self.run_here_if_waiting()
        return (self._here or self._future).result()

    def cancel(self) -> bool:
        """Drop the call if nobody started it."""
        return self._here is None and self._future.cancel()


def run_waiting(tasks: Sequence[Task]) -> None:
    """Run on this thread, from the last back, every task of ``tasks`` no worker has started."""
    for task in reversed(tasks):
        task.run_here_if_waiting()


class InOrder(Generic[T]):
    """``function`` applied to ``items`` one at a time, in order, by one worker of ``pool``; a
    caller asking for a result no one has started yet computes it itself (see :class:`Task`).

    For calls that each use every core on their own (BLAKE3 of a large tensor with its own
    threads): one at a time, the first result comes as soon as it can. A commit handing its six
    16.8 MB tensors to two hashing threads at once (three with the caller) got its first hash
    after 6-8 ms, in order one at a time after 2 ms, and the last no later (11.7 ms).
    """

    def __init__(self, pool: ThreadPoolExecutor, function: Callable[[object], T], items: Sequence[object]) -> None:
        self._function, self._items = function, items
        self._results: list[Future] = [Future() for _ in items]
        self._next = 0  # the first item nobody has started
        self._lock = threading.Lock()
        pool.submit(self._work)

    def _claim(self, wanted: int | None = None) -> int | None:
        """The next item to compute here (``wanted``: only if it is that one), or None."""
        with self._lock:
            index = self._next
            if index >= len(self._items) or (wanted is not None and index != wanted):
                return None
            self._next += 1
            return index

    def _compute(self, index: int) -> None:
        try:
            self._results[index].set_result(self._function(self._items[index]))
        except BaseException as exc:  # raised by result(), to whoever asks for this item
            self._results[index].set_exception(exc)
            if not isinstance(exc, Exception):
                raise

    def _work(self) -> None:
        while (index := self._claim()) is not None:
            self._compute(index)

    def result(self, index: int) -> T:
        """The result for ``items[index]``: computed here if nobody has started it."""
        if self._claim(index) is not None:
            self._compute(index)
        return self._results[index].result()

    def cancel(self) -> None:
        """Start no more items (the ones running finish); their results raise ``CancelledError``."""
        with self._lock:
            left, self._next = range(self._next, len(self._items)), len(self._items)
        for index in left:
            self._results[index].cancel()
