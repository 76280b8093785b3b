"""The performance paths keep their promises: snapshots stay faithful, status never misses a
change, adopted checkout buffers are not shared, commits overlap hashing without leaving files."""

from __future__ import annotations

import random

import numpy as np
import pytest
from keras_models import BUILDERS, sample_input
from reliability_helpers import flip_tensor_byte

from mvc_magics import Repo
from mvc_magics.adapters.keras import KerasAdapter
from mvc_magics.core.hashing import hash_all, hashes_ahead, tensor_hash
from mvc_magics.errors import IntegrityError, TagExistsError
from mvc_magics.operations import lookup as resolver
from mvc_magics.storage.local.index import Index
from mvc_magics.storage.snapshots.snapshot import aligned_empty


def snapshot(model):
    return {k: np.array(v) for k, v in KerasAdapter().get_state(model).items()}


def test_zero_copy_state_is_a_faithful_snapshot_while_the_model_trains():
    model = BUILDERS["dense"]()
    state = KerasAdapter().get_state(model)
    frozen = {k: np.array(v, copy=True) for k, v in state.items()}
    x, y = sample_input("dense", n=16)
    model.fit(x, y, epochs=2, verbose=0)  # in-place optimizer updates
    model.layers[-1].kernel.assign(np.full(model.layers[-1].kernel.shape, 7.0, np.float32))
    for name, array in state.items():
        np.testing.assert_array_equal(array, frozen[name])
        assert not array.flags.writeable  # a view on the variable is never writable
    assert any(not np.array_equal(frozen[k], v) for k, v in snapshot(model).items())


@pytest.mark.parametrize("change", ["one_element", "optimizer_step", "assign_add", "after_checkout"])
def test_status_never_reports_unchanged_for_changed_weights(repo, change):
    model = BUILDERS["conv_bn"]()
    x, y = sample_input("conv_bn", n=8)
    version = repo.commit(model, "net")
    if change == "after_checkout":
        model.fit(x, y, epochs=1, verbose=0)
        repo.checkout(version.id, model)
        assert not repo.status({"net": model})[0].changed
    assert not repo.status({"net": model})[0].changed
    kernel = model.layers[0].kernel
    if change in ("one_element", "after_checkout"):
        values = kernel.numpy()
        values[1, 2, 0, 3] = np.nextafter(values[1, 2, 0, 3], np.float32(np.inf))  # one ulp
        kernel.assign(values)
    elif change == "optimizer_step":
        model.fit(x, y, epochs=1, verbose=0)
    else:
        kernel.assign_add(np.full(kernel.shape, 1e-3, np.float32))
    assert repo.status({"net": model})[0].changed


def test_checkout_adopted_buffers_are_not_shared_between_models(repo):
    a, b = BUILDERS["dense"](seed=0), BUILDERS["dense"](seed=1)
    version = repo.commit(a, "net")
    stored = repo.load_state(version)
    repo.checkout(version.id, a)
    repo.checkout(version.id, b, name="net")
    x, y = sample_input("dense", n=16)
    a.fit(x, y, epochs=2, verbose=0)
    for value, expected in zip(snapshot(b).values(), stored.values(), strict=True):  # b's layers are renamed
        np.testing.assert_array_equal(value, expected)  # training a left b untouched
    assert repo.status({"net": b})[0].changed is False
    assert repo.status({"net": a})[0].changed is True


def test_unaligned_arrays_are_copied_not_adopted():
    model = BUILDERS["dense"]()
    adapter = KerasAdapter()
    state = {k: np.array(v) for k, v in adapter.get_state(model).items()}
    unaligned = {}
    for name, array in state.items():
        raw = np.empty(array.nbytes + 1, np.uint8)[1:]  # deliberately off the 64-byte grid
        view = raw.view(array.dtype).reshape(array.shape)
        view[...] = array + 1
        unaligned[name] = view
    adapter.set_state(model, unaligned, owned=True)  # must not crash TensorFlow
    x, _ = sample_input("dense")
    model.predict(x, verbose=0)
    for value in unaligned.values():
        value[...] = 0  # the caller's buffers are not the model's
    for name, value in snapshot(model).items():
        np.testing.assert_array_equal(value, state[name] + 1)


def test_aligned_empty_is_aligned_for_every_shape():
    for shape, dtype in [((), np.float32), ((0, 3), np.float32), ((7,), np.int8), ((3, 5), np.float64)]:
        array = aligned_empty(shape, np.dtype(dtype))
        assert array.shape == shape and array.dtype == dtype and array.flags.c_contiguous
        assert array.ctypes.data % 64 == 0 or array.size == 0


def test_concurrent_hashes_equal_serial_hashes_in_order():
    rng = np.random.default_rng(0)
    arrays = {f"t{i}": rng.standard_normal((i + 1, 300)).astype(np.float32) for i in range(20)}
    arrays["big"] = rng.standard_normal((1 << 21,)).astype(np.float32)  # multi-threaded BLAKE3
    arrays["scalar"] = np.array(3, np.int64)
    assert list(hashes_ahead(arrays)) == [(k, tensor_hash(a)) for k, a in arrays.items()]
    assert hash_all(arrays) == {k: tensor_hash(a) for k, a in arrays.items()}


def test_commit_that_fails_after_staging_leaves_store_and_tmp_unchanged(repo, weights):
    repo.commit(weights, "net", tags=["best"])
    weights["dense/bias"] = weights["dense/bias"] + 1
    before = sorted(p.name for p in repo.layout.objects.rglob("*.h5"))
    with pytest.raises(TagExistsError):
        repo.commit(weights, "net", tags=["best"])  # tensors were staged before the tag check
    assert sorted(p.name for p in repo.layout.objects.rglob("*.h5")) == before
    assert list(repo.layout.tmp.iterdir()) == []
    assert len(repo.log("net")) == 1


def test_unchanged_recommit_writes_nothing_and_keeps_head(repo, weights):
    first = repo.commit(weights, "net")
    files = sorted(repo.layout.root.rglob("*"))
    again = repo.commit(weights, "net")
    assert again.id == first.id and again.stats.new_version is False and again.is_head
    assert sorted(repo.layout.root.rglob("*")) == files  # no new snapshot, note or temporary
    assert list(repo.layout.tmp.iterdir()) == []


def test_duplicate_tensors_in_one_commit_are_written_once(repo):
    same = np.arange(1000, dtype=np.float32)
    version = repo.commit({"a": same, "b": same.copy(), "c": np.zeros(3, np.float32)}, "dup")
    assert version.stats.tensors_written == 2
    assert version.stats.bytes_written == same.nbytes + 12
    state = repo.load_state(version)
    np.testing.assert_array_equal(state["a"], state["b"])
    assert not np.shares_memory(state["a"], state["b"])


def test_checkout_refuses_damaged_bytes_and_leaves_model_untouched(repo):
    model = BUILDERS["dense"]()
    version = repo.commit(model, "net")
    import h5py

    path = repo.layout.snapshot_path(version.id)
    with h5py.File(path, "r") as f:
        entry = repo.manifest(version.id)[-1]
        offset = f["tensors"][entry.hash].id.get_offset()
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
    model.layers[-1].kernel.assign(np.zeros(model.layers[-1].kernel.shape, np.float32))
    before = snapshot(model)
    with pytest.raises(IntegrityError, match="does not match its hash"):
        repo.checkout(version.id, model)
    for name, value in snapshot(model).items():
        np.testing.assert_array_equal(value, before[name])


def test_progress_bar_shown_when_asked_and_silent_for_small_commits(tmp_path, weights, capsys, monkeypatch):
    monkeypatch.delenv("MVC_PROGRESS", raising=False)
    with Repo(tmp_path / "quiet") as repo:
        repo.commit(weights, "net")
        repo.checkout("latest", weights)
    assert "commit" not in capsys.readouterr().err  # a fast commit stays quiet
    with Repo(tmp_path / "loud") as repo:
        repo.progress = True
        repo.commit(weights, "net")
        repo.checkout("latest", weights)
    err = capsys.readouterr().err
    assert "commit net" in err and "checkout" in err and "B/s" in err
    monkeypatch.setenv("MVC_PROGRESS", "0")
    with Repo(tmp_path / "off") as repo:
        repo.commit(weights, "net")
    assert capsys.readouterr().err == ""


def _naive_short(vid, ids):
    length = 8
    while any(o != vid and o[:length] == vid[:length] for o in ids):
        length += 1
    return vid[:length]


@pytest.mark.parametrize("count", [5, 300])
def test_batched_short_ids_match_the_definition(tmp_path, count):
    rng = random.Random(count)
    ids = {"".join(rng.choice("0123456789abcdef") for _ in range(64)) for _ in range(count)}
    base = sorted(ids)[0]
    ids |= {base[:11] + "0" * 53, base[:11] + "1" * 53, base[:9] + "f" * 55}  # long shared prefixes
    index = Index(tmp_path / "index.sqlite")
    with index.transaction() as conn:
        conn.executemany("INSERT INTO versions(id, name, created, meta, manifest, nbytes) "
                         "VALUES(?, 'm', '', '{}', '[]', 0)", [(i,) for i in ids])
    ids = sorted(ids)
    wanted = ids if count > 100 else ids[:3] + ids[-3:]  # both the per-id and the one-query path
    got = resolver.short_ids(index, wanted)
    assert got == {vid: _naive_short(vid, ids) for vid in wanted}
    assert resolver.short_ids(index, ["0" * 64]) == {"0" * 64: "00000000"}
    index.close()


def test_threaded_verification_refuses_damage_in_a_large_model(repo):
    rng = np.random.default_rng(0)
    model = {f"layer{i}/kernel": rng.standard_normal((512, 512)).astype(np.float32) for i in range(6)}  # 6 MB
    version = repo.commit(model, "big")
    entry = repo.manifest(version.id)[3]
    flip_tensor_byte(repo, version.id, entry.hash, 1000)
    live = {k: np.zeros_like(v) for k, v in model.items()}
    with pytest.raises(IntegrityError, match=entry.name):
        repo.checkout(version.id, live)
    assert all(not v.any() for v in live.values())  # nothing assigned


def _embedding_model():
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((5,), dtype="int32"), keras.layers.Embedding(50, 4),
                              keras.layers.Flatten(), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")  # sparse gradients: scatter updates on the table
    return model


@pytest.mark.parametrize("jit", [True, False])
def test_pinned_hashes_never_hide_a_change(repo, jit):
    """Status after status after status: every kind of update is seen, however it is applied."""
    import keras

    model = BUILDERS["conv_bn"]()
    model.compile(optimizer="adam", loss="mse", jit_compile=jit)
    x, y = sample_input("conv_bn", n=8)
    repo.commit(model, "net")
    adapter = KerasAdapter()
    assert set(adapter.known_hashes(model, adapter.get_state(model))) == set(adapter.get_state(model))
    mutations = [
        lambda: model.fit(x, y, epochs=1, verbose=0),
        lambda: model.layers[0].kernel.assign_add(np.full(model.layers[0].kernel.shape, 1e-3, np.float32)),
        lambda: model.layers[-1].bias.assign(np.ones(model.layers[-1].bias.shape, np.float32)),
        lambda: model.set_weights([w + 1 for w in model.get_weights()]),
        lambda: model.train_on_batch(x, y),
        lambda: keras.ops.convert_to_tensor(0.0) + model.layers[1].moving_mean.assign_sub(
            np.full(model.layers[1].moving_mean.shape, 0.5, np.float32)),
    ]
    for mutate in mutations:
        assert not repo.status({"net": model})[0].changed  # pins the current buffers
        repo.commit(model, "net")
        mutate()
        assert repo.status({"net": model})[0].changed
        repo.commit(model, "net")


def test_pinned_hashes_with_sparse_updates_and_after_checkout(repo):
    model = _embedding_model()
    x = np.random.default_rng(0).integers(0, 50, (16, 5)).astype(np.int32)
    y = np.ones((16, 1), np.float32)
    first = repo.commit(model, "emb")
    assert not repo.status({"emb": model})[0].changed
    model.fit(x, y, epochs=1, verbose=0)
    assert repo.status({"emb": model})[0].changed
    repo.checkout(first.id, model)
    assert not repo.status({"emb": model})[0].changed
    model.fit(x, y, epochs=1, verbose=0)  # updates the adopted checkout buffers
    assert repo.status({"emb": model})[0].changed


def test_large_models_are_not_pinned(repo, monkeypatch):
    from mvc_magics.adapters import tf_variables

    monkeypatch.setattr(tf_variables, "PIN_LIMIT_BYTES", 100)
    model = BUILDERS["dense"]()
    repo.commit(model, "net")
    adapter = KerasAdapter()
    assert adapter.known_hashes(model, adapter.get_state(model)) == {}
    assert not repo.status({"net": model})[0].changed


def test_repeated_log_sees_new_versions_metrics_and_tags_and_is_not_aliased(repo, weights):
    first = repo.commit(weights, "net", message="one", params={"lr": 0.1})
    assert [v.message for v in repo.log("net")] == ["one"]
    weights["dense/bias"] = weights["dense/bias"] + 1
    repo.commit(weights, "net", message="two")
    repo.commit(weights, "net", metrics={"acc": 0.5})  # metrics attached to an existing version
    repo.tag(first.id, "base", name="net")
    log = repo.log("net")
    assert [v.message for v in log] == ["two", "one"]
    assert log[0].metrics == {"acc": 0.5} and log[1].tags == ("base",)
    log[1].params["lr"] = 99  # editing a returned Version must not leak into the next log
    assert repo.log("net")[1].params == {"lr": 0.1}
    assert [v.message for v in repo.log("net", limit=1)] == ["two"]
    assert repo.log()[1].n_tensors == 4 and repo.log()[1].nbytes == first.nbytes


def test_status_right_after_checkout_needs_no_hashing_and_still_sees_changes(repo):
    model = BUILDERS["conv_bn"]()
    x, y = sample_input("conv_bn", n=8)
    version = repo.commit(model, "net")
    model.fit(x, y, epochs=1, verbose=0)
    repo.checkout(version.id, model)
    adapter = KerasAdapter()
    state = adapter.get_state(model)
    assert set(adapter.known_hashes(model, state)) == set(state)  # vouched for by the checkout
    assert not repo.status({"net": model})[0].changed
    model.layers[0].kernel.assign_add(np.full(model.layers[0].kernel.shape, 1e-3, np.float32))
    assert repo.status({"net": model})[0].changed
