"""Optimizer state kept with a version: training resumes exactly (API and --optimizer on the magics)."""

from __future__ import annotations

import pytest
from IPython.core.error import UsageError

from mvc_magics.api.optimizer import commit_optimizer, restore_optimizer
from mvc_magics.errors import ShapeMismatchError, UnknownRefError

torch = pytest.importorskip("torch", reason="PyTorch is not installed")


def setup(seed: int = 0):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    return net, torch.optim.Adam(net.parameters(), lr=0.01)


def train(net, optimizer, steps: int) -> None:
    generator = torch.Generator().manual_seed(7)
    for _ in range(steps):
        x = torch.randn(16, 4, generator=generator)
        optimizer.zero_grad()
        net(x).square().mean().backward()
        optimizer.step()


def weights(net) -> dict:
    return {k: v.clone() for k, v in net.state_dict().items()}


def test_resume_from_a_version_is_exact(repo):
    net, optimizer = setup()
    train(net, optimizer, 3)
    version = repo.commit(net, "net")
    kept = commit_optimizer(repo, optimizer, version)
    assert kept.name == "net.optimizer" and kept.params["for_version"] == version.id
    assert "state/0/exp_avg" in {e.name for e in repo.manifest(kept.id)}
    train(net, optimizer, 3)
    expected = weights(net)
    train(net, optimizer, 5)  # wander off
    repo.checkout(version.id, net)
    assert restore_optimizer(repo, optimizer, version).id == kept.id
    train(net, optimizer, 3)
    for key, value in expected.items():
        assert torch.equal(net.state_dict()[key], value), key


def test_restore_refuses_a_missing_state_and_another_optimizer(repo):
    net, optimizer = setup()
    train(net, optimizer, 1)
    version = repo.commit(net, "net")
    with pytest.raises(UnknownRefError, match="no optimizer state was committed"):
        restore_optimizer(repo, optimizer, version)
    commit_optimizer(repo, optimizer, version)
    sgd = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    before = sgd.state_dict()
    with pytest.raises(ShapeMismatchError, match="optimizer left unchanged"):
        restore_optimizer(repo, sgd, version)
    assert sgd.state_dict() == before


def test_magics_optimizer_flag(ip, capsys):
    net, optimizer = setup()
    ip.user_ns.update(net=net, opt=optimizer)
    train(net, optimizer, 2)
    first = ip.run_line_magic("mvc_commit", "net --optimizer opt")
    assert "optimizer opt kept with" in capsys.readouterr().out
    train(net, optimizer, 2)
    expected = weights(net)
    status = ip.run_line_magic("mvc_status", "")
    assert [entry.name for entry in status] == ["net"]  # net.optimizer is the model's, not a variable
    train(net, optimizer, 4)
    ip.run_line_magic("mvc_checkout", f"{first.short_id} net --optimizer opt")
    train(net, optimizer, 2)
    assert all(torch.equal(net.state_dict()[k], v) for k, v in expected.items())
    ip.user_ns["thing"] = 3
    with pytest.raises(UsageError, match="cannot version a int"):
        ip.run_line_magic("mvc_commit", "net --optimizer thing")


def test_keras_optimizer_state_resumes_exactly(ip):
    keras = pytest.importorskip("keras", reason="Keras is not installed")
    import numpy as np

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    x, y = np.random.default_rng(0).standard_normal((32, 4)), np.zeros((32, 1))
    ip.user_ns.update(model=model, opt=model.optimizer)
    model.fit(x, y, epochs=2, batch_size=32, shuffle=False, verbose=0)
    first = ip.run_line_magic("mvc_commit", "model --optimizer opt")
    model.fit(x, y, epochs=2, batch_size=32, shuffle=False, verbose=0)
    expected = [w.copy() for w in model.get_weights()]
    model.fit(x, y, epochs=3, batch_size=32, shuffle=False, verbose=0)
    ip.run_line_magic("mvc_checkout", f"{first.short_id} model --optimizer opt")
    assert int(model.optimizer.iterations.numpy()) == 2
    model.fit(x, y, epochs=2, batch_size=32, shuffle=False, verbose=0)
    for got, want in zip(model.get_weights(), expected, strict=True):
        np.testing.assert_array_equal(got, want)
