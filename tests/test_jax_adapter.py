"""JAX pytrees and Flax NNX modules through the API and the magics: names from tree paths, checkout
returning a new pytree (NNX: in place), optax states, merge, safetensors export, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from IPython.core.error import UsageError

from mvc_magics.errors import MergeConflictError, ShapeMismatchError, UnsupportedModelError

jax = pytest.importorskip("jax", reason="JAX is not installed")
jnp = jax.numpy


def params(scale: float = 1.0) -> dict:
    key = jax.random.PRNGKey(0)
    return {"dense": {"kernel": jax.random.normal(key, (3, 4)) * scale, "bias": jnp.zeros(4)},
            "head": [jnp.arange(4.0) * scale, np.ones(2, np.float32)]}


def equal_trees(a, b) -> bool:
    same = jax.tree_util.tree_map(lambda x, y: type(x) is type(y) and np.array_equal(np.asarray(x), np.asarray(y))
                                  and np.asarray(x).dtype == np.asarray(y).dtype, a, b)
    return jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b) and all(jax.tree_util.tree_leaves(same))


def test_pytree_round_trip_returns_a_new_pytree(repo):
    tree = params()
    version = repo.commit(tree, "params")
    assert version.framework == "jax"
    assert [e.name for e in repo.manifest(version.id)] == ["dense/bias", "dense/kernel", "head/0", "head/1"]
    changed = jax.tree_util.tree_map(lambda x: x * 3, tree)
    back = repo.checkout(version.id, changed)
    assert back is not changed and equal_trees(back, tree)
    assert equal_trees(repo.checkout(version.id), tree)


def test_optax_state_with_its_named_tuples(repo):
    optax = pytest.importorskip("optax", reason="optax is not installed")
    tree = params()
    optimizer = optax.adam(1e-2)
    state = optimizer.init(tree)
    grads = jax.tree_util.tree_map(jnp.ones_like, tree)
    _updates, state = optimizer.update(grads, state, tree)
    version = repo.commit({"params": tree, "opt": state}, "train_state")
    assert "opt/0/mu/dense/kernel" in {e.name for e in repo.manifest(version.id)}
    rebuilt = repo.checkout(version.id)
    assert type(rebuilt["opt"][0]) is type(state[0])
    assert equal_trees(rebuilt["opt"], state)


def test_nnx_module_is_updated_in_place(repo):
    nnx = pytest.importorskip("flax.nnx", reason="Flax is not installed")
    model = nnx.Sequential(nnx.Linear(3, 4, rngs=nnx.Rngs(0)), nnx.BatchNorm(4, rngs=nnx.Rngs(0)))
    x = jnp.ones((2, 3))
    model.eval()
    expected = np.asarray(model(x))
    version = repo.commit(model, "nnx")
    assert {"layers/0/kernel", "layers/1/mean"} <= {e.name for e in repo.manifest(version.id)}
    model.layers[0].kernel.set_value(model.layers[0].kernel.get_value() * 0)
    assert repo.is_modified(model, version)
    assert repo.checkout(version.id, model) is model
    np.testing.assert_array_equal(np.asarray(model(x)), expected)
    assert not repo.is_modified(model, version)
    with pytest.raises(UnsupportedModelError, match="construct it, then check the version out"):
        repo.checkout(version.id)


def test_status_dedupe_and_merge(repo):
    tree = params()
    first = repo.commit(tree, "params")
    assert not repo.commit(tree, "params").stats.new_version
    tuned = {**tree, "head": [tree["head"][0] + 1, tree["head"][1]]}
    assert repo.is_modified(tuned, first)
    second = repo.commit(tuned, "params")
    assert second.stats.tensors_written == 1 and second.stats.tensors_reused == 3
    merged = repo.load_state(repo.merge([first.id, second.id], name="params"))
    np.testing.assert_array_equal(merged["head/0"], np.asarray(tree["head"][0]) + 0.5)
    greedy = repo.merge([first.id, second.id], method="greedy", name="params",
                        eval_fn=lambda tree: -float(np.abs(np.asarray(tree["head"][0])).sum()))
    assert greedy.id == first.id  # the better one alone: its soup is the first version itself
    assert greedy.report.score == -float(np.abs(np.asarray(tree["head"][0])).sum())
    with pytest.raises(MergeConflictError, match="jax models cannot be ensembled"):
        repo.merge([first.id, second.id], method="ensemble", name="params")


def test_export_reloads_with_safetensors_flax(repo, tmp_path):
    from safetensors.flax import load_file

    tree = params()
    version = repo.commit(tree, "params")
    loaded = load_file(str(repo.export(version.id, tmp_path / "p.safetensors", format="safetensors")))
    assert np.array_equal(np.asarray(loaded["dense/kernel"]), np.asarray(tree["dense"]["kernel"]))


def test_bad_input(repo):
    version = repo.commit(params(), "params")
    other = {"dense": {"kernel": jnp.ones((5, 4)), "bias": jnp.zeros(4)}, "head": [jnp.ones(4), np.ones(2, np.float32)]}
    with pytest.raises(ShapeMismatchError, match="left unchanged"):
        repo.checkout(version.id, other)
    assert np.array_equal(np.asarray(other["dense"]["kernel"]), np.ones((5, 4)))
    with pytest.raises(UnsupportedModelError, match="cannot version a dict"):
        repo.commit({"a": jnp.ones(2), "b": "text"}, "params")


def test_magics_rebind_the_variable(ip):
    ip.user_ns["params"] = tree = params()
    first = ip.run_line_magic("mvc_commit", "params -m init")
    ip.user_ns["params"] = jax.tree_util.tree_map(lambda x: x + 1, tree)
    assert ip.run_line_magic("mvc_status", "")[0].changed
    ip.run_line_magic("mvc_commit", "params -m step")
    ip.run_line_magic("mvc_checkout", f"{first.short_id} params")
    assert equal_trees(ip.user_ns["params"], tree)
    assert "jax" in ip.run_line_magic("mvc_log", "params").table().rows[0]
    ip.user_ns["words"] = {"a": "b"}
    with pytest.raises(UsageError, match="cannot version a dict"):
        ip.run_line_magic("mvc_commit", "words")
