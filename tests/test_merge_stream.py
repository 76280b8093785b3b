"""A plain average is streamed into the commit tensor by tensor: the whole averaged state is never
held, and the version (id and bytes) is exactly the one today's in-memory average commits."""

from __future__ import annotations

import time
import weakref
from pathlib import Path

import h5py
import numpy as np
import pytest
from keras_models import committed_trained, conv_bn_model, dense_model

from mvc_magics.adapters import adapter_named
from mvc_magics.core.merge_plan import accumulator_dtype
from mvc_magics.errors import IntegrityError, ShapeMismatchError, UnsupportedModelError
from mvc_magics.operations import soups, versions
from mvc_magics.operations.commit import commit_state, commit_stream
from mvc_magics.storage.codec.tensor_decode import FileMaps
from mvc_magics.storage.files.placed import PlacedWrites
from mvc_magics.storage.snapshots.staging import STREAM_AHEAD_BYTES


@pytest.fixture
def live_averages(monkeypatch):
    """Wraps the real per-tensor average: records, at each new tensor, the bytes of the earlier
    averaged tensors still alive anywhere in the process (weak references; CPython frees at once)."""
    real = soups._average_one
    made: list[tuple[weakref.ref, int]] = []
    alive_at_start: list[int] = []

    def counting(*args, **kwargs):
        alive_at_start.append(sum(nbytes for ref, nbytes in made if ref() is not None))
        result = real(*args, **kwargs)
        array = getattr(result, "array", result)  # a one-pass tensor comes with its hash
        made.append((weakref.ref(array), array.nbytes))
        return result

    monkeypatch.setattr(soups, "_average_one", counting)
    return alive_at_start


def numpy_average(repo, inputs, weights):
    """The soup by hand from load_state: float64 sums in input order over the sum of the weights;
    integer tensors and seed-generator states from the first input."""
    states = [repo.load_state(v) for v in inputs]
    expected = {}
    for index, name in enumerate(states[0]):
        columns = [list(s.values())[index] for s in states]
        first = columns[0]
        if first.dtype.kind != "f" or name.endswith("seed_generator_state"):
            expected[name] = first
            continue
        acc = np.zeros(first.shape, accumulator_dtype(first.dtype.name))
        for array, weight in zip(columns, weights, strict=True):
            acc += array.astype(np.float64) * weight
        expected[name] = (acc / sum(weights)).astype(first.dtype)
    return expected


@pytest.mark.parametrize("factory, kind", [(dense_model, "dense"), (conv_bn_model, "conv_bn")])
def test_streamed_soup_is_bit_for_bit_todays_soup(repo, live_averages, factory, kind):
    inputs = committed_trained(repo, factory, kind)
    weights = [0.5, 0.3, 0.2]
    merged = repo.merge([v.id for v in inputs], weights=weights)
    during_merge = list(live_averages)
    stored = repo.load_state(merged)
    expected = numpy_average(repo, inputs, weights)
    assert list(stored) == list(expected)
    for name, array in expected.items():
        assert stored[name].dtype == array.dtype
        assert stored[name].tobytes() == array.tobytes(), name
    # Today's path: the in-memory average (merge_preview computes it and commits nothing) in a
    # model rebuilt from the stored structure gives the same id.
    preview = repo.merge_preview([v.id for v in inputs], weights=weights)
    assert preview.report.tensors_averaged == merged.report.tensors_averaged > 0
    again = repo.commit(preview.model, "net")
    assert again.id == merged.id and not again.stats.new_version
    assert merged.report.tensors_copied == preview.report.tensors_copied
    assert merged.report.tensors_copied >= (1 if kind == "conv_bn" else 0)  # Dropout's generator state
    assert max(during_merge) <= STREAM_AHEAD_BYTES  # only what the writer has not written yet


@pytest.mark.parametrize("slow_disk", [False, True])
def test_streaming_never_holds_the_whole_average(repo, live_averages, monkeypatch, slow_disk):
    if slow_disk:  # each placed piece lands late, as under load: the bound must still hold
        real_write = PlacedWrites._write_piece

        def late(self, *args):
            time.sleep(0.03)
            real_write(self, *args)

        monkeypatch.setattr(PlacedWrites, "_write_piece", late)
    rng = np.random.default_rng(0)
    tensor_bytes = 512 * 1024 * 4  # 2 MiB each, 12 MiB in all: three times what the writer may lag
    inputs = [repo.commit({f"w{i}": rng.standard_normal((512, 1024)).astype(np.float32) for i in range(6)}, "d")
              for _ in range(3)]
    merged = repo.merge([v.id for v in inputs])
    assert merged.report.tensors_averaged == 6 and len(live_averages) == 6
    # Never the whole average: at most what the writer may lag behind (the tensor it writes and
    # STREAM_AHEAD_BYTES of the ones after it: three of these tensors).
    assert max(live_averages) <= STREAM_AHEAD_BYTES + tensor_bytes < 6 * tensor_bytes
    # Today's in-memory average, committed as a dict model, is the same version.
    preview = repo.merge_preview([v.id for v in inputs])
    again = repo.commit(preview.model, "d")
    assert again.id == merged.id and not again.stats.new_version


def test_streamed_merge_into_a_live_model_commits_then_loads_it(repo, monkeypatch):
    adapter_type = type(adapter_named("keras"))
    builds = []
    real_build = adapter_type.build
    monkeypatch.setattr(adapter_type, "build", lambda self, *a, **k: builds.append(a) or real_build(self, *a, **k))
    inputs = [repo.commit(dense_model(seed), "net") for seed in range(2)]
    live = dense_model(7)
    merged = repo.merge([v.id for v in inputs], weights=[0.7, 0.3], into=live)
    assert builds == []  # streamed, then checked out into the live model: nothing rebuilt
    assert repo.head("net").id == merged.id
    stored = repo.load_state(merged)
    held = adapter_named("keras").get_state(live)
    assert [a.tobytes() for a in held.values()] == [a.tobytes() for a in stored.values()]
    # A live model that does not fit is refused before anything is committed.
    count = len(repo.log("net"))
    with pytest.raises(ShapeMismatchError):
        repo.merge([v.id for v in inputs], weights=[0.2, 0.8], into=conv_bn_model(0))
    assert len(repo.log("net")) == count


def test_a_removed_soup_merged_again_rewrites_the_bytes_another_version_uses(repo):
    rng = np.random.default_rng(1)
    inputs = [repo.commit({"a": rng.standard_normal(300).astype(np.float32),
                           "b": rng.standard_normal(200).astype(np.float32)}, "d") for _ in range(2)]
    soup = repo.merge([v.id for v in inputs])
    # Another history reuses the soup's averaged bytes: they stay in the soup's file after its removal.
    other = repo.commit({**repo.load_state(soup), "c": np.zeros(3, np.float32)}, "other")
    assert {e.object for e in repo.store.manifest(other.id) if e.name != "c"} == {soup.id}
    repo.remove(soup.id, name="d", force=True)
    repo.gc()
    again = repo.merge([v.id for v in inputs])
    assert again.id == soup.id
    assert repo.verify().ok
    assert {k: v.tobytes() for k, v in repo.load_state(again).items()} == {
        k: v.tobytes() for k, v in repo.load_state(other).items() if k != "c"}
    assert versions.load_state(repo.store, other.id)["a"].shape == (300,)


def _mapped_rss(view: np.ndarray) -> int:
    """Resident bytes of the memory mapping holding ``view`` (Linux /proc/self/smaps)."""
    address, inside = view.ctypes.data, False
    with open("/proc/self/smaps") as handle:
        for line in handle:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                start, end = (int(x, 16) for x in head.split("-"))
                inside = start <= address < end
            elif inside and head == "Rss:":
                return int(line.split()[1]) * 1024
    raise AssertionError("mapping not found")


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="needs Linux /proc/self/smaps")
def test_a_reader_gives_back_the_mapped_pages_it_has_read(tmp_path):
    """A merge reads every input through maps of their files: pages read must not stay in the
    process (they would count as memory, all inputs' worth), only in the page cache."""
    path = tmp_path / "f.h5"
    size = 24 << 20
    noise = np.random.default_rng(0).integers(0, 255, size, dtype=np.uint8)
    with h5py.File(path, "w") as f:
        f.create_dataset("a", data=noise)
        f.create_dataset("b", data=np.ones(size, np.uint8))
    maps = FileMaps()
    with h5py.File(path, "r") as f:
        first = maps.stored_bytes(f["a"], size)
        assert int(first.sum()) == int(noise.sum())  # read: its pages are resident in this process
        assert _mapped_rss(first) >= size // 2
        second = maps.stored_bytes(f["b"], size)  # more than the release threshold handed out
        assert _mapped_rss(first) < size // 8
        assert first.tobytes() == noise.tobytes() and int(second.sum()) == size  # still readable
        del first, second
        maps.close()


def test_a_damaged_input_stops_the_streamed_merge_with_nothing_written(repo):
    rng = np.random.default_rng(2)
    inputs = [repo.commit({"a": rng.standard_normal(5000).astype(np.float32),
                           "b": rng.standard_normal(5000).astype(np.float32)}, "d") for _ in range(3)]
    entry = next(e for e in repo.manifest(inputs[2].id) if e.name == "b")
    path = repo.layout.snapshot_path(entry.object)
    with h5py.File(path, "r") as f:
        offset = f["tensors"][entry.hash].id.get_offset() + 5
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))
    count = len(repo.log("d"))
    # "a" is averaged and handed to the writer before "b" of the third input is found damaged.
    with pytest.raises(IntegrityError, match=rf"{inputs[2].id[:12]} tensor 'b'"):
        repo.merge([v.id for v in inputs])
    assert len(repo.log("d")) == count
    assert not [p for p in repo.layout.tmp.iterdir() if p.suffix == ".h5"]  # the staged file is gone


def test_a_state_committed_whole_or_streamed_is_the_models_version(repo):
    rng = np.random.default_rng(3)
    state = {"w": rng.standard_normal((40, 30)).astype(np.float32), "step": np.array(7, np.int64)}
    model = repo.commit(dict(state), "m")
    whole = commit_state(repo.store, "numpy", None, state, "m", attach=False)
    streamed = commit_stream(repo.store, "numpy", None, iter(state.items()), "m", attach=False)
    assert whole.id == streamed.id == model.id
    assert not whole.stats.new_version and not streamed.stats.new_version
    with pytest.raises(UnsupportedModelError, match="no variables"):
        commit_stream(repo.store, "numpy", None, iter(()), "m")


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, "bfloat16", np.complex64])
def test_sums_give_the_bits_of_the_plain_float64_formula(dtype, split, monkeypatch):
    """The sum starts from the first input (no zeroing pass), converts in numpy's own buffers and
    divides straight into the output dtype: the bytes are those of ``sum(w * x.astype(f64)) / total``,
    -0.0 included (0.0 + -0.0 is +0.0). ``split``: the tensor counts as large, so it is summed and
    divided in two halves on two threads (and the weighted halves in chunks that do not
    divide them evenly): still the same bits."""
    if split:
        monkeypatch.setattr(soups, "_SPLIT_ELEMENTS", 1001)
        monkeypatch.setattr(soups, "_CHUNK_ELEMENTS", 4099)
    if dtype == "bfloat16":
        import ml_dtypes

        dtype = ml_dtypes.bfloat16
    rng = np.random.default_rng(5)
    shape = (300, 301)  # more than one chunk of soups._CHUNK_ELEMENTS
    for weights in ([1.0, 0.3, 2.5, 1.0], [0.7], [1.0, 1.0]):
        inputs = [rng.standard_normal(shape) * 10 for _ in weights]
        if np.dtype(dtype).kind == "c":
            inputs = [x + 1j * rng.standard_normal(shape) for x in inputs]
        inputs = [x.astype(dtype) for x in inputs]
        for x in inputs:
            x.reshape(-1)[:5] = -0.0
        acc_dtype = accumulator_dtype(np.dtype(dtype).name)
        sums = soups.Sums()
        acc = sums.empty(shape, acc_dtype)
        for position, (x, w) in enumerate(zip(inputs, weights, strict=True)):
            soups.accumulate(acc, x, w, start=position == 0)
        got = soups.mean_of(acc, sum(weights), np.dtype(dtype))
        plain = np.zeros(shape, acc_dtype)
        for x, w in zip(inputs, weights, strict=True):
            plain += x.astype(acc_dtype) * w
        expected = (plain / sum(weights)).astype(dtype)
        assert got.dtype == expected.dtype and got.tobytes() == expected.tobytes()
        assert not np.shares_memory(got, acc)  # a new array: the sum's buffer is reused


def test_a_merge_of_loose_inputs_holds_the_sum_and_the_output_only(repo):
    """Inputs stored as they are (loose) are hashed and summed from the maps of their files: no
    copy of any input tensor is made, so the merge's own memory is the float64 sum (2x the tensor)
    and the output tensor (1x), whatever the number of inputs."""
    import tracemalloc

    rng = np.random.default_rng(6)
    big = (2048, 1024)  # 8 MiB of float32
    inputs = [repo.commit({"w": rng.standard_normal(big).astype(np.float32),
                           "b": rng.standard_normal(64).astype(np.float32)}, "m").id for _ in range(6)]
    tensor_bytes = 8 << 20
    for weights in (None, [1.0, 2.0, 1.0, 1.0, 1.0, 0.5]):
        tracemalloc.start()
        try:
            repo.merge(inputs, weights=weights)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        # A copy of one input tensor on top (as reading into new arrays made) would be 4x.
        assert peak < 3.3 * tensor_bytes, f"peak {peak / 2**20:.1f} MiB"
