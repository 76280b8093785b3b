"""A checkout's HEAD move (operations/checkout.HeadMove) is made by the store's background worker
once the model holds the version: the checkout returns when the copy is done, and whoever reads or
writes the store next waits for the move. A PyTorch module says when it accepted the version
(every tensor verified, every name, shape and dtype checked): from then on the move is made even if
the copy is interrupted. A checkout the model refuses at its checks moves nothing and audits
nothing; one that loads moves HEAD and audits it once; a move that fails is said by the next write."""

from __future__ import annotations

import signal
import threading

import numpy as np
import pytest

from mvc_magics import Repo
from mvc_magics.errors import ShapeMismatchError
from mvc_magics.operations import checkout as checkout_op


def _state(repo: Repo, name: str):
    repo.head(name)  # a read: waits for a move handed off
    return (repo.layout.read_head(name), [(e.op, e.ids) for e in repo.audit.entries()],
            repo.layout.files.exists(repo.layout.journal_path), sorted(p.name for p in repo.layout.tmp.iterdir()))


def _acceptances_seen(monkeypatch, probe) -> list[tuple[str, object]]:
    """(thread, ``probe()`` then) for every checkout whose model said it accepted the version."""
    seen: list[tuple[str, object]] = []
    original = checkout_op.HeadMove.accepted

    def accepted(self):
        seen.append((threading.current_thread().name, probe()))
        return original(self)

    monkeypatch.setattr(checkout_op.HeadMove, "accepted", accepted)
    return seen


def test_torch_refused_at_its_checks_moves_nothing_and_a_load_moves_head_audited_once(repo: Repo, monkeypatch):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(700, 700), torch.nn.Linear(700, 10))  # ~2 MB: threaded copy
    first = repo.commit(model, "net")
    with torch.no_grad():
        model[0].weight.add_(1.0)
    second = repo.commit(model, "net")
    other = torch.nn.Sequential(torch.nn.Linear(700, 700), torch.nn.Linear(700, 11))  # another head shape
    repo.checkout(first.id, model)
    before, weights = _state(repo, "net"), {k: v.clone() for k, v in other.state_dict().items()}
    seen = _acceptances_seen(monkeypatch, lambda: float(model[0].weight.detach()[0, 0]))
    with pytest.raises(ShapeMismatchError):
        repo.checkout(second.id, other, name="net")
    assert not seen and not repo.store.background.pending()  # nothing handed off
    assert _state(repo, "net") == before  # no journal, no entry, no temporary, HEAD stays
    assert all(torch.equal(weights[k], v) for k, v in other.state_dict().items())

    old = float(model[0].weight.detach()[0, 0])
    repo.checkout(second.id, model)
    # Accepted once, at the checks, before the first byte was copied into the model.
    assert seen == [("MainThread", old)] and float(model[0].weight.detach()[0, 0]) != old
    assert repo.head("net").id == second.id == repo.layout.read_head("net")  # the read waited for the move
    assert [e.op for e in repo.audit.entries()][-1] == "checkout" and not repo.audit.check().problems
    assert not repo.layout.files.exists(repo.layout.journal_path)
    stored = repo.load_state(second.id)
    assert all(np.array_equal(v.numpy(), stored[k]) for k, v in model.state_dict().items())


def test_keras_refused_at_its_checks_moves_nothing(repo: Repo):
    keras = pytest.importorskip("keras")
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    version = repo.commit(model, "net")
    other = keras.Sequential([keras.Input((8,)), keras.layers.Dense(5)])
    before, weights = _state(repo, "net"), [w.copy() for w in other.get_weights()]
    with pytest.raises(ShapeMismatchError):
        repo.checkout(version.id, other, name="net")
    assert _state(repo, "net") == before
    assert all(np.array_equal(a, b) for a, b in zip(weights, other.get_weights()))
    model.set_weights([w + 1 for w in model.get_weights()])
    repo.checkout(version.id, model)
    assert repo.head("net").id == version.id and [e.op for e in repo.audit.entries()][-1] == "checkout"
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), repo.load_state(version.id).values()))


def test_a_model_that_never_says_it_accepted_moves_head_after_the_load(repo: Repo):
    """Adapters without the signal (a dict of arrays, scikit-learn) move HEAD once loaded, as before."""
    weights = {"w": np.arange(6, dtype=np.float32)}
    first = repo.commit(weights, "arrays")
    repo.commit({"w": weights["w"] + 1}, "arrays")
    entries = len(list(repo.audit.entries()))
    repo.checkout(first.id, weights, name="arrays")
    assert repo.head("arrays").id == first.id and len(list(repo.audit.entries())) == entries + 1


def test_ctrl_c_once_the_model_accepted_the_version_waits_for_the_whole_copy(repo: Repo, monkeypatch):
    """A real SIGINT raised at the model's checks (the copy not begun) is held until the copy is
    done: the model holds the whole version and HEAD moved, then KeyboardInterrupt is raised."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(700, 700), torch.nn.Linear(700, 10))
    first = repo.commit(model, "net")
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(-2.0)
    second = repo.commit(model, "net")
    repo.checkout(first.id, model)
    original = checkout_op.HeadMove.accepted

    def interrupted_acceptance(self):
        signal.raise_signal(signal.SIGINT)
        original(self)

    monkeypatch.setattr(checkout_op.HeadMove, "accepted", interrupted_acceptance)
    with pytest.raises(KeyboardInterrupt):
        repo.checkout(second.id, model)
    stored = repo.load_state(second.id)  # a read: waits for the move handed off
    assert all(np.array_equal(v.detach().numpy(), stored[k]) for k, v in model.state_dict().items())
    assert repo.layout.read_head("net") == second.id and [e.op for e in repo.audit.entries()][-1] == "checkout"
    assert not repo.layout.files.exists(repo.layout.journal_path)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler put back


def test_the_checkout_returns_before_the_move_and_the_next_read_waits_for_it(repo: Repo, monkeypatch):
    """The move runs on the store's background worker: held there, the checkout has returned with
    the model loaded while HEAD has not moved yet; a read of the store then waits for the move."""
    from mvc_magics.storage.local.ref_writes import RefWrites

    first = repo.commit({"w": np.zeros(5, np.float32)}, "arrays")
    second = repo.commit({"w": np.ones(5, np.float32)}, "arrays")
    release, original = threading.Event(), RefWrites.move_head

    def held_move(self, *args, **kwargs):
        assert release.wait(20)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(RefWrites, "move_head", held_move)
    weights = {"w": np.full(5, 7, np.float32)}
    repo.checkout(first.id, weights, name="arrays")
    assert np.array_equal(weights["w"], np.zeros(5))  # loaded; the move still held
    assert repo.layout.read_head("arrays") == second.id and repo.store.background.pending() == ["checkout arrays"]
    threading.Timer(0.2, release.set).start()
    assert repo.head("arrays").id == first.id  # waited for the move
    assert repo.layout.read_head("arrays") == first.id and not repo.store.background.pending()
    assert [e.op for e in repo.audit.entries()][-1] == "checkout" and not repo.audit.check().problems


def test_a_move_that_fails_in_the_background_is_said_by_the_next_write(repo: Repo, monkeypatch):
    from mvc_magics.errors import StoreError
    from mvc_magics.storage.local.ref_writes import RefWrites

    first = repo.commit({"w": np.zeros(3, np.float32)}, "arrays")
    second = repo.commit({"w": np.ones(3, np.float32)}, "arrays")

    def failing_move(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(RefWrites, "move_head", failing_move)
    repo.checkout(first.id, {"w": np.zeros(3, np.float32)}, name="arrays")
    repo.store.background.wait()  # the move failed on the worker: kept for the next call
    monkeypatch.undo()
    with pytest.raises(StoreError, match=r"checkout arrays in the background failed.*No space left"):
        repo.tag(second.id, "kept", name="arrays")
    assert repo.head("arrays").id == second.id and "checkout" not in [e.op for e in repo.audit.entries()]
    assert not repo.layout.files.exists(repo.layout.journal_path)
    repo.tag(second.id, "kept", name="arrays")  # said once: the next write goes on
    assert repo.resolve("kept", name="arrays").id == second.id


def test_a_version_another_process_removes_before_the_move_is_not_made_head(repo: Repo, monkeypatch):
    """Another process removes the version between the checkout's return and its HEAD move: the
    move is not made (HEAD never names a removed version) and the next write says why."""
    import subprocess
    import sys

    from mvc_magics.errors import StoreError
    from mvc_magics.storage.local.background import Background

    first = repo.commit({"w": np.zeros(3, np.float32)}, "arrays")
    second = repo.commit({"w": np.ones(3, np.float32)}, "arrays")
    release, submit = threading.Event(), Background.submit

    def held_submit(self, kind, job):  # the move starts only once the other process is done
        return submit(self, kind, lambda own: (release.wait(60), job(own))[1])

    monkeypatch.setattr(Background, "submit", held_submit)
    repo.checkout(first.id, {"w": np.full(3, 4, np.float32)}, name="arrays")
    code = ("import sys; from mvc_magics import Repo\n"
            "with Repo(sys.argv[1]) as other: other.remove(sys.argv[2], name='arrays')")
    done = subprocess.run([sys.executable, "-c", code, str(repo.path), first.id], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    release.set()
    with pytest.raises(StoreError, match=r"was not moved to .*removed meanwhile by another process"):
        repo.tag(second.id, "kept", name="arrays")
    assert repo.head("arrays").id == second.id and "checkout" not in [e.op for e in repo.audit.entries()]
