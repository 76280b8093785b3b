"""Work a store finishes after the call that started it returned: the automatic pack, a
checkout's HEAD move and the commits a training loop hands off (see
:mod:`mvc_magics.operations.autopack`, :class:`mvc_magics.operations.checkout.HeadMove` and
:func:`mvc_magics.operations.commit.commit_later`).

One worker thread per store object runs the jobs in the order they were given. Whoever reads or
writes the store next waits for them (:meth:`Background.wait`), through this store object or
another of this process on the same store (:meth:`Background.settle_others`); so does closing the
store and the end of the process (``atexit``). A job's error is kept and raised once, by the next
call that checks (:meth:`Background.raise_error`), as one line. A pack in flight is asked to stop at its next
file (:attr:`Background.stop`) when the user's thread needs the store, so the user never waits
for more than one file to be re-coded. Jobs run on a store object of their own (opened by the
worker), so their index transactions never mix with the user's on one SQLite connection.

While a training loop copies its weights for a hand-off (:meth:`Background.handing_off`), the
commits being written wait at their next tensor (:meth:`Background.pause_point`): the copy, the
only part of a commit the loop waits for, gets both cores, the memory bandwidth and the GIL
(h5py holds it while it writes a tensor) to itself.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from ...errors import StoreError

_LIVE: weakref.WeakSet[Background] = weakref.WeakSet()
# The same, by store folder (settle_others looks at its own store's only: the index is read often).
_BY_STORE: dict[str, weakref.WeakSet[Background]] = {}
# Longest a job waits at a pause point for one hand-off's copy (seconds).
PAUSE_LIMIT = 5.0


class Background:
    """The background jobs of one store object (see the module docstring)."""

    def __init__(self, name: str, opener: Callable[[], Any], store_key: str = "") -> None:
        self._name = name
        self.store_key = store_key  # which store folder: other store objects on it wait for these jobs
        self._opener = opener  # opens the worker's own store object (index connection, lock)
        self._store: Any = None
        self._pool: ThreadPoolExecutor | None = None
        self._jobs: deque[tuple[str, Future]] = deque()
        self._errors: list[str] = []
        self._lock = threading.Lock()
        #: Set while the user's thread wants the store: a pack stops at its next file.
        self.stop = threading.Event()
        #: Bytes of loose snapshot files, as last counted (None: not counted yet in this process).
        self.loose_bytes: int | None = None
        #: Buffers of finished hand-offs a training loop's next copy reuses (dropped when the loop ends).
        self.spare: list = []
        self._handing_off = 0  # user threads copying weights for a hand-off right now
        self._running = threading.Event()  # clear while they copy: jobs wait at their next pause point
        self._running.set()
        self._hand_off_times: deque[float] = deque(maxlen=2)  # when the last two hand-offs started
        _LIVE.add(self)
        if store_key:
            _BY_STORE.setdefault(store_key, weakref.WeakSet()).add(self)

    def submit(self, kind: str, job: Callable[[Any], object]) -> Future:
        """Run ``job(store)`` after the jobs already given, on the worker's own store object
        (``kind`` names it in :meth:`pending`; ``pack`` jobs may be asked to stop early)."""
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"mvc-{self._name}")
            if kind != "pack" and any(k == "pack" and not f.done() for k, f in self._jobs):
                self.stop.set()  # a commit handed off goes before a pack: it stops after its file
            future = self._pool.submit(self._run, kind, job)
            self._jobs.append((kind, future))
            return future

    def _run(self, kind: str, job: Callable[[Any], object]) -> object:
        try:
            if kind == "pack":
                with self._lock:  # a stop asked for an earlier pack does not hold for this one...
                    if not any(k != "pack" and not f.done() for k, f in self._jobs):  # ...unless work waits
                        self.stop.clear()
            if self._store is None:
                self._store = self._opener()
                # Its own jobs (the pack a commit handed off queues) join this queue, on this thread.
                self._store.background = self
            return job(self._store)
        except BaseException as exc:  # kept for the next call into the store, never lost
            reason = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
            if kind == "pack":  # nothing of the user's was lost: said in the log, tried again later
                logging.getLogger("mvc_magics").warning("the automatic pack stopped: %s", reason)
                return None
            with self._lock:
                self._errors.append(f"{kind} in the background failed: {reason}")
            return None

    def pending(self) -> list[str]:
        """What is still running or queued, oldest first (``commit net``, ``pack``...)."""
        with self._lock:
            while self._jobs and self._jobs[0][1].done():
                self._jobs.popleft()
            return [kind for kind, future in self._jobs if not future.done()]

    def busy(self) -> bool:
        return bool(self.pending())

    def in_worker(self) -> bool:
        """True on this store's own background thread (which never waits for itself)."""
        return threading.current_thread().name.startswith(f"mvc-{self._name}")

    def wait(self, packs: bool = True) -> None:
        """Wait until every job given so far is done; with ``packs`` False a pack in flight is
        asked to stop at its next file (and waited for) instead of being waited for whole."""
        if self.in_worker():
            return
        with self._lock:
            jobs = list(self._jobs)
        if not jobs:
            return
        if not packs:
            self.stop.set()  # only packs look at it: commits handed off always finish
        try:
            for _, future in jobs:
                with contextlib.suppress(BaseException):
                    future.result()
        finally:
            self.stop.clear()

    @contextlib.contextmanager
    def handing_off(self) -> Iterator[None]:
        """Around the copy a hand-off makes on the user's thread: jobs wait at their next
        :meth:`pause_point` until it is done (see the module docstring)."""
        if self.in_worker():
            yield
            return
        with self._lock:
            self._handing_off += 1
            self._running.clear()
            self._hand_off_times.append(time.monotonic())
        try:
            yield
        finally:
            with self._lock:
                self._handing_off -= 1
                if not self._handing_off:
                    self._running.set()

    def pause_point(self) -> None:
        """Called by a job's threads between two tensors: waits while a hand-off copies. Pausing
        only makes the copy faster, never decides correctness, so a copy that takes longer than
        ``PAUSE_LIMIT`` seconds (a huge model) has the jobs carry on beside it."""
        self._running.wait(PAUSE_LIMIT)

    def dense_hand_offs(self, within: float) -> bool:
        """True while hand-offs come less than ``within`` seconds apart: a loop committing densely,
        whose next commit would wait behind whatever else the worker started (a pack's file)."""
        with self._lock:
            times = list(self._hand_off_times)
        return len(times) == 2 and times[1] - times[0] < within and time.monotonic() - times[1] < within

    def hand_offs_ended(self) -> None:
        """The loop handing commits off ended (see :meth:`dense_hand_offs`)."""
        with self._lock:
            self._hand_off_times.clear()

    def take_spare(self, fits: Callable[[Any], bool]) -> Any:
        """Remove and return a spare buffer set ``fits`` accepts (None when there is none)."""
        with self._lock:
            for index, spare in enumerate(self.spare):
                if fits(spare):
                    return self.spare.pop(index)
        return None

    def give_spare(self, buffers: Any, keep: int) -> None:
        """Keep ``buffers`` for a later hand-off (at most ``keep`` sets are kept)."""
        with self._lock:
            self.spare.append(buffers)
            del self.spare[:-keep]

    def throttle(self, kind_prefix: str, limit: int) -> None:
        """Wait until fewer than ``limit`` jobs whose kind starts with ``kind_prefix`` are pending
        (commits handed off each hold a copy of the weights: memory stays bounded when the disk is
        slower than the loop)."""
        if self.in_worker():
            return
        while True:
            with self._lock:
                waiting = [future for kind, future in self._jobs if kind.startswith(kind_prefix) and not future.done()]
            if len(waiting) < limit:
                return
            self.stop.set()  # a pack in front of the commit waited for stops after its file
            with contextlib.suppress(BaseException):
                waiting[0].result()

    def settle(self) -> None:
        """For a read: wait for the commits handed off (a pack in front of one is asked to stop);
        a pack alone goes on (reads and a pack never disturb each other: files are replaced whole)."""
        with self._lock:
            commits = [future for kind, future in self._jobs if kind != "pack" and not future.done()]
        if commits:
            self.wait(packs=False)

    def settle_others(self) -> None:
        """Wait for the commits and HEAD moves this process's other store objects on the same store
        handed off (:meth:`settle`): a read or write made here comes after them, as it would have
        come after the calls that handed them off (a version removed here while another notebook's
        checkout of it was still moving that notebook's HEAD would otherwise leave the HEAD on it)."""
        for other in list(_BY_STORE.get(self.store_key, ())) if self.store_key else ():
            if other is not self and not other.in_worker():
                other.settle()

    def raise_error(self) -> None:
        """Raise the first error a background job hit since the last call (one line), if any."""
        with self._lock:
            errors, self._errors = self._errors, []
        if errors:
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            raise StoreError(errors[0] + more)

    def forget_after_fork(self) -> None:
        """In a forked child: the jobs, the worker thread and its store object are the parent's (the
        child has no such thread; waiting for them would hang its exit): forget them, never close them."""
        self._lock = threading.Lock()
        self._jobs, self._errors, self.spare = deque(), [], []
        self._pool = self._store = None
        self.stop, self._running = threading.Event(), threading.Event()
        self._running.set()
        self._handing_off = 0
        self._hand_off_times.clear()

    def close(self) -> None:
        """Wait for every job (a pack stops at its next file), then stop the worker and its store."""
        self.wait(packs=False)
        self.spare.clear()
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        store, self._store = self._store, None
        if store is not None:
            with contextlib.suppress(BaseException):
                store.close()


def _forget_parent_jobs() -> None:
    for background in list(_LIVE):
        background.forget_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_parent_jobs)


def _finish_at_exit() -> None:  # a kernel that exits waits for the commits it handed off
    for background in list(_LIVE):
        with contextlib.suppress(BaseException):
            background.close()


# Run before concurrent.futures stops taking work at exit (its hook, registered earlier, runs
# after ours: threading calls them newest first); the commits still need their hashing threads.
_register = getattr(threading, "_register_atexit", None)
if _register is not None:
    _register(_finish_at_exit)
else:  # pragma: no cover - Python without the threading hook
    atexit.register(_finish_at_exit)
