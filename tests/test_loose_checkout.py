"""A PyTorch checkout of a loose version copies each tensor once, straight from the mapped file
into the module's own tensors, after hashing the mapped bytes: the result is exact, owns its
memory (training it never touches the store), and a damaged byte leaves the module unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from mvc_magics import Repo
from mvc_magics.errors import IntegrityError
from mvc_magics.storage.files.checksum import is_loose

torch = pytest.importorskip("torch", reason="PyTorch is not installed")


def _net():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.BatchNorm1d(128), torch.nn.Linear(128, 8))
    net(torch.randn(16, 64))  # BatchNorm statistics and num_batches_tracked move
    return net


def _state(net) -> dict[str, np.ndarray]:
    return {k: v.detach().clone().numpy() for k, v in net.state_dict().items()}


def _zero(net) -> None:
    with torch.no_grad():
        for tensor in net.state_dict().values():
            tensor.zero_()


def test_checkout_of_a_loose_version_is_exact_and_owns_its_memory(repo: Repo):
    net = _net()
    expected = _state(net)
    version = repo.commit(net, "net")
    assert is_loose(repo.layout.snapshot_path(version.id))
    _zero(net)
    repo.checkout(version.id, net)
    assert all(np.array_equal(net.state_dict()[k].numpy(), v) for k, v in expected.items())
    with torch.no_grad():  # training goes on: the store's file must not change with it
        for parameter in net.parameters():
            parameter.add_(1.0)
    assert all(np.array_equal(repo.load_state(version.id)[k], v) for k, v in expected.items())
    assert repo.verify().ok


def test_a_damaged_byte_in_a_loose_file_is_refused_and_the_module_is_unchanged(repo: Repo):
    net = _net()
    version = repo.commit(net, "net")
    entry = max(repo.manifest(version.id), key=lambda e: e.nbytes)
    path = repo.layout.snapshot_path(version.id)
    data = bytearray(path.read_bytes())
    stored = net.state_dict()[entry.name].numpy().tobytes()
    at = data.find(stored[:64]) + 100  # a byte inside the tensor's bytes
    data[at] ^= 0x01
    path.write_bytes(bytes(data))
    _zero(net)
    before = _state(net)
    with pytest.raises(IntegrityError, match=entry.name):
        repo.checkout(version.id, net)
    assert all(np.array_equal(net.state_dict()[k].numpy(), v) for k, v in before.items())


def test_a_checkout_replaces_values_autograd_saved_as_copy_would(repo: Repo):
    """The verified bytes go into CPU tensors through numpy (on every core); the tensors' version
    counters still move, so a backward through values the checkout replaced is refused, not wrong."""
    net = _net()
    version = repo.commit(net, "net")
    weight = net[0].weight
    loss = (weight * weight).sum()  # saves the weight for backward
    before = weight._version
    repo.checkout(version.id, net)
    assert weight._version > before
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_a_checkout_into_other_dtypes_converts_like_copy_(repo: Repo):
    net = _net()
    expected = _state(net)
    version = repo.commit(net, "net")
    net.double()  # float64 parameters now: torch's copy_ converts, the numpy path is not used
    _zero(net)
    repo.checkout(version.id, net)
    assert net[0].weight.dtype == torch.float64
    assert all(np.array_equal(net.state_dict()[k].numpy(), v.astype(net.state_dict()[k].numpy().dtype))
               for k, v in expected.items())
