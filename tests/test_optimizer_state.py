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
    train(net, optimizer, 4)
    ip.run_line_magic("mvc_checkout", f"{first.short_id} net --optimizer opt")
    train(net, optimizer, 2)
    assert all(torch.equal(net.state_dict()[k], v) for k, v in expected.items())
    ip.user_ns["thing"] = 3
    with pytest.raises(UsageError, match="cannot version a int"):
        ip.run_line_magic("mvc_commit", "net --optimizer thing")
