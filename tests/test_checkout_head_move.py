"""A PyTorch checkout's HEAD move starts once the module accepted the version
(operations/checkout.HeadMove): every tensor verified and every name, shape and dtype checked, so
its syncs run beside the copy into the module; other adapters (Keras) move HEAD after the load. A
checkout the model refuses at its checks moves nothing and audits nothing; one that loads moves
HEAD, audits it once and returns only when both the copy and the move are done."""

from __future__ import annotations

import signal
import threading

import numpy as np
import pytest

from mvc_magics import Repo
from mvc_magics.errors import ShapeMismatchError
from mvc_magics.operations import checkout as checkout_op


def _state(repo: Repo, name: str):
    return (repo.layout.read_head(name), [(e.op, e.ids) for e in repo.audit.entries()],
            repo.layout.files.exists(repo.layout.journal_path), sorted(p.name for p in repo.layout.tmp.iterdir()))


def _moves_seen(monkeypatch, probe) -> list[tuple[str, object]]:
    """(thread, ``probe()`` then) for every HEAD move a checkout started early."""
    seen: list[tuple[str, object]] = []
    original = checkout_op.HeadMove.start

    def start(self):
        seen.append((threading.current_thread().name, probe()))
        return original(self)

    monkeypatch.setattr(checkout_op.HeadMove, "start", start)
    return seen


def test_torch_refused_at_its_checks_moves_nothing_and_a_load_moves_head_beside_the_copy(repo: Repo, monkeypatch):
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
    seen = _moves_seen(monkeypatch, lambda: float(model[0].weight.detach()[0, 0]))
    with pytest.raises(ShapeMismatchError):
        repo.checkout(second.id, other, name="net")
    assert _state(repo, "net") == before and not seen  # no journal, no entry, no temporary, HEAD stays
    assert all(torch.equal(weights[k], v) for k, v in other.state_dict().items())

    old = float(model[0].weight.detach()[0, 0])
    repo.checkout(second.id, model)
    # Started once, by the checks, before the first byte was copied into the model.
    assert seen == [("MainThread", old)] and float(model[0].weight.detach()[0, 0]) != old
    assert repo.layout.read_head("net") == second.id == repo.head("net").id
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
    original = checkout_op.HeadMove.start

    def interrupted_start(self):
        signal.raise_signal(signal.SIGINT)
        original(self)

    monkeypatch.setattr(checkout_op.HeadMove, "start", interrupted_start)
    with pytest.raises(KeyboardInterrupt):
        repo.checkout(second.id, model)
    stored = repo.load_state(second.id)
    assert all(np.array_equal(v.detach().numpy(), stored[k]) for k, v in model.state_dict().items())
    assert repo.layout.read_head("net") == second.id and [e.op for e in repo.audit.entries()][-1] == "checkout"
    assert not repo.layout.files.exists(repo.layout.journal_path)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler put back
