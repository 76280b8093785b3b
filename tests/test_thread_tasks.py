"""A task handed to a pool is run by the caller when no worker has started it (core/threads.Task):
the caller's core does the work instead of waiting for a worker the scheduler left queued. Each
call runs once, results come in order, and an error is raised where the caller asks for it."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from mvc_magics.core.threads import Task, run_waiting


def test_tasks_no_worker_started_run_on_the_caller_once_each_in_order():
    pool = ThreadPoolExecutor(max_workers=1)
    release, started = threading.Event(), threading.Event()
    ran: list[tuple[int, str]] = []

    def work(index: int) -> int:
        ran.append((index, threading.current_thread().name))
        if index == 0:
            started.set()
            release.wait(10)  # the only worker is busy with this one
        return index * 10

    tasks = [Task(pool, work, index) for index in range(4)]
    assert started.wait(10)
    run_waiting(tasks)  # 1, 2, 3 were waiting for the busy worker: run here, from the last back
    here = threading.current_thread().name
    assert [index for index, name in ran if name == here] == [3, 2, 1]
    release.set()
    assert [task.result() for task in tasks] == [0, 10, 20, 30]
    assert sorted(index for index, _ in ran) == [0, 1, 2, 3]  # each call ran once
    pool.shutdown()


def test_an_error_of_a_task_run_here_is_raised_by_result_and_cancel_drops_what_nobody_started():
    pool = ThreadPoolExecutor(max_workers=1)
    release = threading.Event()
    first = Task(pool, release.wait, 10)

    def fails() -> None:
        raise ValueError("damaged")

    failing, dropped = Task(pool, fails), Task(pool, lambda: 1)
    assert dropped.cancel()
    failing.run_here_if_waiting()  # no error yet: it is raised where the caller asks for the result
    with pytest.raises(ValueError, match="damaged"):
        failing.result()
    release.set()
    assert first.result() is True
    assert not failing.cancel()  # already run
    pool.shutdown()


def test_a_task_without_a_pool_runs_only_on_the_caller_beside_the_pools():
    """The caller's share of work shared out to every thread (storage/snapshots/pieces): never
    handed to a worker, run by run_waiting first, and the pool's tasks still run on the workers."""
    pool = ThreadPoolExecutor(max_workers=1)
    names: list[tuple[str, str]] = []
    worker_started = threading.Event()

    def share(who: str) -> str:
        names.append((who, threading.current_thread().name))
        if who == "worker":
            worker_started.set()
        return who

    handed = Task(pool, share, "worker")
    assert worker_started.wait(10)
    caller = Task(None, share, "caller")
    assert ("caller", threading.current_thread().name) not in names  # nobody ran it yet
    run_waiting([handed, caller])
    assert handed.result() == "worker" and caller.result() == "caller"
    assert names[-1] == ("caller", threading.current_thread().name) and len(names) == 2
    assert Task(None, share, "dropped").cancel() and len(names) == 2
    pool.shutdown()


def test_the_result_of_a_task_without_a_pool_runs_it_when_nobody_did():
    ran: list[str] = []
    task = Task(None, lambda: ran.append(threading.current_thread().name) or 7)
    assert task.result() == 7 and task.result() == 7 and ran == [threading.current_thread().name]


def test_in_order_computes_one_item_at_a_time_in_order_and_the_caller_takes_what_nobody_started():
    from mvc_magics.core.threads import InOrder

    pool = ThreadPoolExecutor(max_workers=1)
    busy, release = threading.Event(), threading.Event()
    pool.submit(lambda: (busy.set(), release.wait(10)))  # the only worker is held: nobody starts item 0
    assert busy.wait(10)
    ran: list[tuple[int, str]] = []

    def square(item: int) -> int:
        ran.append((item, threading.current_thread().name))
        return item * item

    chain = InOrder(pool, square, [1, 2, 3, 4])
    here = threading.current_thread().name
    assert chain.result(0) == 1  # computed here, at once
    assert ran == [(1, here)]
    release.set()  # the worker takes the rest in order
    assert [chain.result(index) for index in range(1, 4)] == [4, 9, 16]
    assert sorted(item for item, _ in ran) == [1, 2, 3, 4]  # each once
    assert [item for item, _ in ran] == [1, 2, 3, 4]  # in order
    pool.shutdown()


def test_in_order_raises_an_items_error_to_its_asker_and_cancel_starts_no_more():
    from concurrent.futures import CancelledError

    from mvc_magics.core.threads import InOrder

    pool = ThreadPoolExecutor(max_workers=1)
    busy, release = threading.Event(), threading.Event()
    pool.submit(lambda: (busy.set(), release.wait(10)))
    assert busy.wait(10)
    ran: list[int] = []

    def check(item: int) -> int:
        ran.append(item)
        if item == 2:
            raise ValueError("item 2 is bad")
        return item

    chain = InOrder(pool, check, [1, 2, 3])
    assert chain.result(0) == 1
    with pytest.raises(ValueError, match="item 2 is bad"):
        chain.result(1)
    chain.cancel()
    release.set()
    with pytest.raises(CancelledError):
        chain.result(2)
    pool.shutdown(wait=True)
    assert ran == [1, 2]  # the worker started nothing after the cancel
