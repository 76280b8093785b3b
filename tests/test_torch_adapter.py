"""PyTorch modules through the API and the magics: parameters and buffers, tied weights, merge,
ensemble, export re-loaded by torch/safetensors, and bad input that leaves the model untouched."""

from __future__ import annotations

import numpy as np
import pytest
from IPython.core.error import UsageError

from mvc_magics.errors import MergeConflictError, ShapeMismatchError, UnsupportedModelError

torch = pytest.importorskip("torch", reason="PyTorch is not installed")
nn = torch.nn


def make_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    net(torch.randn(16, 4))  # training mode: BatchNorm running stats and num_batches_tracked move
    return net


class TiedLM(nn.Module):
    """An embedding tied to the output layer (one Parameter under two state_dict keys)."""

    def __init__(self, vocab: int = 11, dim: int = 4) -> None:
        super().__init__()
        self.vocab, self.dim = vocab, dim
        self.embed = nn.Embedding(vocab, dim)
        self.out = nn.Linear(dim, vocab, bias=False)
        self.out.weight = self.embed.weight

    def forward(self, tokens):
        return self.out(self.embed(tokens))


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same(model: nn.Module, reference: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    assert list(state) == list(reference)
    for key, value in reference.items():
        assert state[key].dtype == value.dtype and torch.equal(state[key], value), key


def train_step(model: nn.Module, seed: int = 1) -> None:
    torch.manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.randn(16, 4)).square().mean().backward()
    optimizer.step()


def test_round_trip_in_place_and_rebuilt_is_bit_identical(repo):
    net = make_net()
    reference, x = snapshot(net), torch.randn(5, 4)
    expected = net.eval()(x)
    net.train()
    version = repo.commit(net, "net")
    assert version.framework == "torch" and version.libraries["torch"] == torch.__version__
    assert {e.name for e in repo.manifest(version.id)} == set(reference)  # buffers included
    train_step(net)
    assert not torch.equal(net[0].weight, reference["0.weight"])
    repo.checkout(version.id, net)
    assert_same(net, reference)
    rebuilt = repo.checkout(version.id)
    assert type(rebuilt) is nn.Sequential and rebuilt is not net
    assert_same(rebuilt, reference)
    assert torch.equal(rebuilt.eval()(x), expected)


def test_tied_parameters_are_stored_once_and_stay_tied(repo):
    lm = TiedLM()
    version = repo.commit(lm, "lm")
    names = [e.name for e in repo.manifest(version.id)]
    assert names == ["embed.weight"]  # out.weight is the same tensor
    assert repo.structure(version.id)["tied"] == {"out.weight": "embed.weight"}
    reference = snapshot(lm)
    with torch.no_grad():
        lm.embed.weight.mul_(3)
    repo.checkout(version.id, lm)
    assert lm.out.weight is lm.embed.weight
    assert_same(lm, reference)
    with pytest.raises(UnsupportedModelError, match="runs that class's code"):
        repo.checkout(version.id)  # a class from the tests: imported only when the user opts in
    rebuilt = repo.checkout(version.id, unsafe=True)
    assert rebuilt.out.weight is rebuilt.embed.weight
    assert_same(rebuilt, reference)


def test_status_and_unchanged_recommit(repo):
    net = make_net()
    first = repo.commit(net, "net")
    assert not repo.is_modified(net, first)
    again = repo.commit(net, "net")
    assert again.id == first.id and not again.stats.new_version
    train_step(net)
    assert repo.is_modified(net, first)
    assert repo.status({"net": net})[0].changed
    repo.checkout(first.id, net)
    assert repo.status({"net": net})[0].changed is False


def test_an_unchanged_layer_is_not_written_again(repo):
    net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 2))
    repo.commit(net, "net")
    with torch.no_grad():
        net[2].weight.add_(0.5)  # fine-tune the head only
    version = repo.commit(net, "net")
    assert version.stats.tensors_written == 1 and version.stats.tensors_reused == 3


def test_checkout_keeps_dtype_and_refuses_another_kind(repo):
    net = make_net()
    version = repo.commit(net, "net")
    reference = snapshot(net)
    doubled = make_net(5).double()
    repo.checkout(version.id, doubled)
    assert doubled[0].weight.dtype == torch.float64
    assert torch.equal(doubled[0].weight, reference["0.weight"].double())
    repo.commit({"w": np.zeros(3, np.float32)}, "other")
    with pytest.raises(UnsupportedModelError, match="torch model"):
        repo.checkout(version.id, {"w": np.zeros(3, np.float32)})


def test_another_architecture_leaves_the_model_untouched(repo):
    version = repo.commit(make_net(), "net")
    other = nn.Sequential(nn.Linear(4, 9), nn.BatchNorm1d(9), nn.ReLU(), nn.Linear(9, 3))
    before = snapshot(other)
    with pytest.raises(ShapeMismatchError, match="model left unchanged"):
        repo.checkout(version.id, other)
    assert_same(other, before)


def test_mixing_frameworks_in_one_history_is_refused(repo):
    repo.commit({"w": np.zeros(3, np.float32)}, "net")
    with pytest.raises(UnsupportedModelError, match="history of numpy models"):
        repo.commit(make_net(), "net")


def test_merge_average_takes_counters_from_the_first_input(repo):
    nets = [make_net(seed) for seed in range(3)]
    nets[2](torch.randn(16, 4))  # a different num_batches_tracked
    ids = [repo.commit(n, "net").id for n in nets]
    merged = repo.merge(ids, name="net")
    state = repo.load_state(merged)
    expected = np.mean([n[0].weight.detach().numpy().astype(np.float64) for n in nets], axis=0)
    np.testing.assert_array_equal(state["0.weight"], expected.astype(np.float32))
    assert int(state["1.num_batches_tracked"]) == int(nets[0][1].num_batches_tracked)
    into = make_net(9)
    repo.merge(ids, method="greedy", eval_fn=lambda m: -float(m.eval()(torch.ones(2, 4)).detach().abs().sum()),
               name="net", into=into)
    assert set(into.state_dict()) == set(nets[0].state_dict())


def test_output_ensemble_is_the_mean_and_rebuilds(repo):
    nets = [make_net(seed).eval() for seed in range(2)]
    ids = [repo.commit(n, "net").id for n in nets]
    result = repo.merge(ids, method="ensemble", name="net")
    assert result.stats.tensors_written == 0  # members' tensors are already stored
    ensemble = repo.checkout(result.id).eval()
    x = torch.randn(3, 4)
    expected = (nets[0](x) + nets[1](x)) / 2
    torch.testing.assert_close(ensemble(x), expected, rtol=0, atol=1e-6)
    vote = repo.checkout(repo.merge(ids, method="vote", name="net").id).eval()
    assert torch.allclose(vote(x).sum(-1), torch.ones(3))
    repo.commit({"w": np.zeros(3, np.float32)}, "plain")
    with pytest.raises(MergeConflictError, match="one framework"):
        repo.merge([ids[0], repo.log("plain")[0].id], method="ensemble")


def test_export_reloads_with_safetensors_and_torchscript(repo, tmp_path):
    from safetensors.torch import load_file, load_model

    lm, net = TiedLM(), make_net().eval()
    tied = repo.commit(lm, "lm")
    path = repo.export(tied.id, tmp_path / "lm.safetensors", format="safetensors")
    fresh = TiedLM()
    load_model(fresh, str(path))
    assert torch.equal(fresh.embed.weight, lm.embed.weight) and fresh.out.weight is fresh.embed.weight
    version = repo.commit(net, "net")
    assert set(load_file(str(repo.export(version.id, tmp_path / "n.safetensors", format="safetensors")))) == \
        set(net.state_dict())
    scripted = torch.jit.load(str(repo.export(version.id, tmp_path / "net.pt", format="torchscript")))
    x = torch.randn(2, 4)
    assert torch.equal(scripted(x), net(x))


def test_magics_commit_status_checkout_log_and_errors(ip, capsys):
    ip.user_ns["net"] = net = make_net()
    reference = snapshot(net)
    first = ip.run_line_magic("mvc_commit", "net -m start")
    train_step(net)
    ip.run_line_magic("mvc_commit", "net -m trained")
    assert ip.run_line_magic("mvc_status", "")[0].changed is False
    ip.run_line_magic("mvc_checkout", f"{first.short_id} net")
    assert ip.user_ns["net"] is net
    assert_same(net, reference)
    ip.run_line_magic("mvc_checkout", "latest --as newest")
    assert isinstance(ip.user_ns["newest"], nn.Sequential)
    assert "torch" in ip.run_line_magic("mvc_log", "net").table().rows[0]
    ip.run_line_magic("mvc_merge", f"{first.short_id} latest --model net --method ensemble")
    ip.user_ns["thing"] = object()
    with pytest.raises(UsageError) as error:
        ip.run_line_magic("mvc_commit", "thing")
    assert "cannot version a object" in str(error.value) and "\n" not in str(error.value)
    ip.user_ns["wide"] = wide = nn.Sequential(nn.Linear(4, 5))
    before = snapshot(wide)
    with pytest.raises(UsageError, match="does not fit this model"):
        ip.run_line_magic("mvc_checkout", f"{first.short_id} wide --model net")
    assert_same(wide, before)


def test_the_mvc_command_logs_and_exports_torch_versions(repo, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from safetensors.torch import load_file

    net = make_net()
    repo.commit(net, "net", metrics={"loss": 0.5})
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("MVC_DIR", None)

    def mvc(*args):
        return subprocess.run([sys.executable, "-m", "mvc_magics.cli", "--store", str(repo.path), *args],
                              capture_output=True, text=True, env=env, timeout=300, check=True).stdout

    assert "torch" in mvc("log")
    mvc("export", "latest", str(tmp_path / "net.safetensors"), "--format", "safetensors", "--model", "net")
    loaded = load_file(str(tmp_path / "net.safetensors"))
    assert all(torch.equal(loaded[k], v) for k, v in net.state_dict().items())


@pytest.mark.parametrize("lazy", ["torch.nn.modules.batchnorm.LazyBatchNorm1d", "torch.nn.modules.linear.LazyLinear"])
def test_a_stored_module_with_lazy_tensors_is_refused_in_one_line(lazy):
    """A structure naming a lazy layer (a crafted file: a committed one has made its tensors) has
    no shapes to check: refused with one line, never torch's RuntimeError at the first shape read."""
    from mvc_magics.adapters.torch import TorchAdapter

    args = {"out_features": 3} if "Linear" in lazy else {}
    layer = {"class": lazy, "args": args}
    for node in (layer, {"class": "torch.nn.modules.container.Sequential", "children": [["0", layer]]}):
        with pytest.raises(UnsupportedModelError, match="uninitialized \\(lazy\\) tensors") as caught:
            TorchAdapter().build({"format": "torch.nn.Module/1", "module": node, "tied": {}}, {})
        assert "\n" not in str(caught.value)
