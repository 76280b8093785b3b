"""A training loop's hand-off: while the loop copies its weights, the commits still being written
in the background wait at their next tensor (they would take the cores and the GIL the copy needs),
and carry on once the copy is done; a copy that takes very long never holds them for good."""

from __future__ import annotations

import threading
import time

import numpy as np

from mvc_magics import commit_every
from mvc_magics.operations.autopack import loose_summary
from mvc_magics.operations.commit import commit_later
from mvc_magics.storage.local import background


def _weights(value: float) -> dict[str, np.ndarray]:
    return {f"layer{i}/kernel": np.full((256, 256), value + i, np.float32) for i in range(4)}


def _observe_pauses(monkeypatch, bg) -> threading.Event:
    """Set once a background thread reaches a pause point (the real one still runs)."""
    reached = threading.Event()
    real = bg.pause_point

    def observed() -> None:
        reached.set()
        real()

    monkeypatch.setattr(bg, "pause_point", observed)
    return reached


def test_commits_being_written_wait_while_a_loop_copies_its_weights(repo, monkeypatch):
    bg = repo.store.background
    reached = _observe_pauses(monkeypatch, bg)
    with bg.handing_off():  # a loop's copy in progress (commit_later's own hand-off nests inside it)
        future = commit_later(repo.store, _weights(1.0), "loop")
        assert reached.wait(30)  # the commit started on the background thread...
        time.sleep(1.0)
        # ...and stopped at its first tensor: nothing hashed into a file, nothing written.
        assert not future.done()
        assert list(repo.layout.tmp.iterdir()) == []
        assert bg.pending() == ["commit loop"]
    version = future.result(timeout=60)  # the copy done: the commit finishes
    assert (repo.load_state(version.id)["layer3/kernel"] == 4.0).all()
    assert [v.id for v in repo.log("loop")] == [version.id]


def test_a_copy_longer_than_the_pause_limit_does_not_hold_the_commits(repo, monkeypatch):
    monkeypatch.setattr(background, "PAUSE_LIMIT", 0.2)
    bg = repo.store.background
    with bg.handing_off():  # a huge model's copy, say: the commit goes on beside it
        future = commit_later(repo.store, _weights(2.0), "loop")
        version = future.result(timeout=60)
    assert (repo.load_state(version.id)["layer0/kernel"] == 2.0).all()


def test_a_dense_loop_puts_the_automatic_pack_off_until_it_ends(repo, monkeypatch):
    """A pack started between two of a loop's commits would hold the next one behind its file:
    while commits are handed off densely, the loose files wait; the end of the loop packs them."""
    monkeypatch.setenv("MVC_PACK_MB", "1.5")  # each commit writes 1 MB: the second one passes it
    weights = _weights(0.0)
    with commit_every(weights, 1, name="loop", repo=repo) as run:
        for _ in range(4):
            for array in weights.values():
                array += 1.0
            run.step()
        assert len(run.versions) == 4  # written, and no pack queued behind them
        assert "pack" not in repo.store.background.pending()
        assert loose_summary(repo.store)[0] == 4
    repo.store.background.wait()  # the block ended: the pack put off ran
    assert loose_summary(repo.store) == (0, 0)
    assert [float(repo.load_state(v.id)["layer0/kernel"][0, 0]) for v in run.versions] == [1.0, 2.0, 3.0, 4.0]
