"""commit_every in a plain PyTorch loop and in a JAX loop, and the Lightning callback, on real training."""

from __future__ import annotations

import numpy as np
import pytest

from mvc_magics import commit_every

torch = pytest.importorskip("torch", reason="PyTorch is not installed")


def test_commit_every_counts_optimizer_steps_and_commits_the_final_state(repo):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    snapshots = {}
    with commit_every(net, 4, name="net", repo=repo, optimizer=optimizer) as run:
        for step in range(1, 11):
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(net(x), y)
            loss.backward()
            optimizer.step()  # the hook counts it (and commits on steps 4 and 8)
            run.log(loss=loss.item())
            snapshots[step] = {k: v.clone() for k, v in net.state_dict().items()}
    assert [v.params["step"] for v in run.versions] == [4, 8, 10]
    assert all("loss" in v.metrics for v in run.versions)
    for version in run.versions:
        stored = repo.load_state(version)
        for key, value in snapshots[version.params["step"]].items():
            np.testing.assert_array_equal(stored[key], value.numpy())
    optimizer.step()  # the hook is gone after the block: no further commit
    assert run.steps == 10 and len(repo.log("net")) == 3


def test_commit_every_without_an_optimizer_for_a_jax_loop(repo):
    jax = pytest.importorskip("jax", reason="JAX is not installed")
    params = {"w": jax.numpy.zeros(3)}
    run = commit_every(params, 2, name="params", repo=repo)
    for step in range(4):
        params = {"w": params["w"] + 1}
        run.model = params  # JAX arrays are immutable: the loop rebinds, and tells the run
        run.step(loss=1.0 / (step + 1))
    assert [v.params["step"] for v in run.versions] == [2, 4]
    np.testing.assert_array_equal(repo.load_state(run.versions[-1])["w"], np.full(3, 4.0))


def test_lightning_callback_commits_each_validated_epoch(repo, tmp_path):
    lightning = pytest.importorskip("lightning.pytorch", reason="Lightning is not installed")
    from mvc_magics.integrations.lightning import CommitCheckpoint

    class Regressor(lightning.LightningModule):
        def __init__(self, hidden: int = 8) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.net = torch.nn.Sequential(torch.nn.Linear(4, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1))

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, _index):
            x, y = batch
            return torch.nn.functional.mse_loss(self(x), y)

        def validation_step(self, batch, _index):
            x, y = batch
            self.log("val_loss", torch.nn.functional.mse_loss(self(x), y))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 4), torch.randn(64, 1))
    loader = torch.utils.data.DataLoader(data, batch_size=16)
    callback = CommitCheckpoint(name="regressor", repo=repo)
    model = Regressor()
    trainer = lightning.Trainer(max_epochs=2, callbacks=[callback], logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                                accelerator="cpu", num_sanity_val_steps=0)
    trainer.fit(model, loader, loader)
    assert [v.params["epoch"] for v in callback.versions] == [1, 2]
    assert all("val_loss" in v.metrics for v in callback.versions)
    assert callback.versions[-1].framework == "torch"
    latest = repo.load_state(callback.versions[-1])
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(latest[key], value.numpy())
