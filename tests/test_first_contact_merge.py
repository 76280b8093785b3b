"""Averaging never needs to run model code (issue 25, item 6): an average of stored tensors under an
unchanged stored structure is committed directly, for every framework, with no live model and no
--unsafe; only --into a new variable, --eval and ensembles need a live object."""

from __future__ import annotations

import numpy as np
import pytest
from IPython.core.error import UsageError

tf = pytest.importorskip("tensorflow")
torch = pytest.importorskip("torch")


class LinearRegression(tf.keras.Model):  # the origin document's model (section 4.1)
    def __init__(self):
        super().__init__()
        self.w = tf.Variable(0.0, name="weight")
        self.b = tf.Variable(0.0, name="bias")

    def call(self, x):
        return self.w * x + self.b


class LinearModule(tf.Module):
    def __init__(self):
        super().__init__()
        self.w = tf.Variable(0.0, name="weight")
        self.b = tf.Variable(0.0, name="bias")


class TinyNet(torch.nn.Module):  # user code: a rebuild would need classes= or --unsafe
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3, 2)
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))


def _set(model, w: float, b: float) -> None:
    if isinstance(model, torch.nn.Module):
        with torch.no_grad():
            model.fc.weight.fill_(w)
            model.fc.bias.fill_(b)
    else:
        model.w.assign(w)
        model.b.assign(b)


@pytest.mark.parametrize("make", [LinearRegression, LinearModule, TinyNet], ids=["keras-raw", "tf-module", "torch"])
def test_an_average_of_user_classes_is_committed_without_rebuilding(repo, make):
    model = make()
    _set(model, 1.0, 2.0)
    a = repo.commit(model, "lin")
    _set(model, 3.0, 6.0)
    b = repo.commit(model, "lin")
    merged = repo.merge([a.id, b.id], weights=[0.5, 0.5], name="lin")  # no model=, no into=, no unsafe
    assert set(merged.parents) == {a.id, b.id}
    state_a, state_b = repo.load_state(a.id), repo.load_state(b.id)
    state = repo.load_state(merged.id)
    assert set(state) == set(state_a)
    for key, value in state.items():
        if value.dtype.kind == "f":
            np.testing.assert_array_equal(value, ((state_a[key].astype(np.float64) + state_b[key]) / 2)
                                          .astype(value.dtype))
    assert repo.structure(merged.id) == repo.structure(a.id)
    live = make()
    repo.checkout(merged.id, live)
    back = live.fc.weight.detach().numpy() if isinstance(live, torch.nn.Module) else live.w.numpy()
    assert np.all(back == 2.0)


def test_the_magic_merges_the_document_model_without_unsafe(ip):
    ip.user_ns["LinearRegression"] = LinearRegression
    ip.run_cell("model = LinearRegression()\nmodel.w.assign(1.0)")
    first = ip.run_line_magic("mvc_commit", "model")
    ip.run_cell("model.w.assign(3.0)")
    second = ip.run_line_magic("mvc_commit", "model")
    ip.run_cell("del model")  # no live model anywhere
    merged = ip.run_line_magic("mvc_merge", f"{first.short_id} {second.short_id} --weights 0.5,0.5")
    assert set(merged.parents) == {first.id, second.id}
    # building a new variable runs the class: that still needs the opt-in, and says so
    with pytest.raises(UsageError, match=r"unsafe|classes"):
        ip.run_line_magic("mvc_merge", f"{first.short_id} {second.short_id} --weights 0.25,0.75 --into fresh")
