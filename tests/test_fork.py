"""A process forked while a store is open (a PyTorch DataLoader worker with the fork start method,
``os.fork``) neither holds nor releases the store's lock: an flock belongs to the open file
description parent and child share, so the child's copy of the descriptor could release the
parent's lock under it, or keep the store locked after the parent died. Nor does it wait, at its
exit, for the commits its parent handed to the background. Real processes, a real lock."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from mvc_magics import Repo
from mvc_magics.operations.commit import commit_later

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")


def lock_is_free(path) -> bool:
    """True when another open of the lock file (another holder) could take the lock now."""
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    finally:
        os.close(fd)


def exit_status(pid: int, limit: float = 30.0) -> int | str:
    """The child's exit code, or "hung" (then it is killed)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return "hung"


def test_a_child_leaving_the_parents_locked_block_does_not_release_its_lock(repo):
    layout = repo.store.layout
    pid = -1
    try:
        with repo.store.locked():
            pid = os.fork()
            if pid:  # the child leaves the block at once (its finally runs there too), then exits
                assert exit_status(pid) == 0
                # Still the parent's: no other holder can take it, and lock.owner still names the parent.
                assert not lock_is_free(layout.lock_path)
                assert layout.lock_holder().startswith(f"{os.getpid()}@")
                vid = repo.commit({"w": np.arange(5, dtype=np.float32)}, "m").id  # the parent goes on
    except BaseException:
        if pid == 0:
            os._exit(3)
        raise
    if pid == 0:
        os._exit(0)
    assert lock_is_free(layout.lock_path) and layout.lock_holder() is None
    assert repo.resolve("latest", name="m").id == vid and repo.verify().ok


def end(how: str) -> None:
    if how == "crashes":
        os.kill(os.getpid(), signal.SIGKILL)
    # "exits": returns; multiprocessing then runs the exit hooks (threading's, which wait for this
    # process's background jobs) and exits, as a DataLoader worker does


@pytest.mark.parametrize("child_ends", ["exits", "crashes"])
def test_a_child_forked_during_a_background_commit_exits_and_the_commit_lands(repo, child_ends):
    import multiprocessing

    rng = np.random.default_rng(1)
    weights = {f"layer{i}": rng.standard_normal(1 << 21).astype(np.float32) for i in range(4)}
    layout = repo.store.layout
    future = commit_later(repo.store, weights, "net")
    deadline = time.monotonic() + 30
    while layout.lock_holder() is None and not future.done() and time.monotonic() < deadline:
        time.sleep(0.001)  # until the background worker holds the lock
    child = multiprocessing.get_context("fork").Process(target=end, args=(child_ends,))
    child.start()
    child.join(30)
    if child.is_alive():  # waiting, at its exit, for jobs only its parent runs
        child.kill()
        child.join()
        pytest.fail("the forked child hung at its exit")
    assert child.exitcode == (0 if child_ends == "exits" else -signal.SIGKILL)
    version = future.result(timeout=60)
    assert repo.resolve("latest", name="net").id == version.id and repo.verify().ok
    loaded = repo.checkout(version.id, {k: np.zeros_like(v) for k, v in weights.items()}, name="net")
    assert all(np.array_equal(loaded[k], weights[k]) for k in weights)
    assert repo.head("net").id == version.id  # a read: waits for the checkout's HEAD move, which takes the lock
    assert lock_is_free(layout.lock_path) and layout.lock_holder() is None


def test_a_child_does_not_keep_the_lock_of_a_parent_that_was_killed(tmp_path):
    path = tmp_path / ".mvc"
    Repo(path).close()
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import os, time
        from mvc_magics.storage.local.store import Store
        store = Store({str(path)!r})
        with store.locked():
            child = os.fork()
            if child == 0:  # a long-lived child (a data loader worker, a server) that never runs a program
                time.sleep(120)
                os._exit(0)
            print(child, flush=True)
            time.sleep(120)
    """)], stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    child = int(holder.stdout.readline())
    try:
        holder.kill()
        holder.wait()
        os.kill(child, 0)  # the child is alive...
        with Repo(path) as repo:  # ...and the store is not locked by it: the dead holder's lock is free
            repo.store.layout.lock_timeout = 2.0
            assert repo.commit({"w": np.ones(3, np.float32)}, "m").id
            assert repo.verify().ok
    finally:
        os.kill(child, signal.SIGKILL)


def test_a_child_uses_the_index_through_its_own_connection_and_both_histories_stay_whole(repo):
    """SQLite's connections must not cross a fork: a child that reads and commits through the store
    object it inherited does so through a connection of its own, and the parent's stays usable."""
    first = repo.commit({"w": np.arange(5, dtype=np.float32)}, "m").id
    index = repo.store.index
    inherited = index._connection
    pid = os.fork()
    if pid == 0:  # the child: read, commit, check, and say how it went in the exit code
        code = 3
        try:
            assert repo.resolve("latest", name="m").id == first
            repo.commit({"w": np.arange(6, dtype=np.float32)}, "m")
            code = 0 if index._connection is not inherited else 4
        finally:
            os._exit(code)
    assert exit_status(pid) == 0
    assert index._connection is inherited  # the parent's own, still open
    ids = [version.id for version in repo.log("m")]
    assert len(ids) == 2 and ids[-1] == first
    assert repo.commit({"w": np.arange(7, dtype=np.float32)}, "m").id in [v.id for v in repo.log("m")]
    assert index.integrity_problems() == [] and repo.verify().ok
