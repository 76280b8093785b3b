"""The commit's write path: new tensors coded in worker threads while the writer writes them.

Real stores and HDF5 files. The suite's usual tensors are small (coded in the writing thread);
these are large enough (>= staging.PARALLEL_MIN_BYTES) to go through the worker threads.
"""

from __future__ import annotations

import os

import h5py
import ml_dtypes
import numpy as np
import pytest

from mvc_magics import Repo
from mvc_magics.errors import StoreError
from mvc_magics.storage.files.checksum import body_blocks_digest, body_digest
from mvc_magics.storage.snapshots import snapshot_writer, staging


def _weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    weights = {f"layer_{i}/kernel": (rng.standard_normal((256, 96 + 8 * i)) * 0.05).astype(np.float32)
               for i in range(10)}
    weights["half"] = rng.standard_normal(70_000).astype(np.float16)
    weights["bf16"] = rng.standard_normal(50_000).astype(ml_dtypes.bfloat16)
    weights["steps"] = np.arange(20_000, dtype=np.int64)
    weights["noise"] = rng.integers(0, 255, 300_000, dtype=np.uint8)  # stays raw: coding would not save
    weights["copy_of_0"] = weights["layer_0/kernel"].copy()  # same bytes: stored once
    weights["small"] = np.ones(8, np.float32)  # coded in the writing thread
    return weights


def _datasets(repo, vid) -> dict[str, tuple[bytes, dict]]:
    with h5py.File(repo.layout.snapshot_path(vid), "r") as f:
        return {k: (d[()].tobytes(), {a: str(v) for a, v in d.attrs.items()}) for k, d in f["tensors"].items()}


def test_tensors_coded_in_worker_threads_read_back_bit_exact_and_match_the_one_thread_path(
        tmp_path, monkeypatch):
    monkeypatch.setenv("MVC_DELTA_DEPTH", "4")  # a commit codes (deltas when it can) instead of writing loose
    weights = _weights()
    monkeypatch.setattr(staging, "PENDING_BYTES", 200_000)  # the writer drains while workers code
    monkeypatch.setattr(snapshot_writer, "WRITEBACK_BYTES", 100_000)  # early writeback on every few tensors
    with Repo(tmp_path / "threads" / ".mvc") as repo:
        version = repo.commit(weights, "net")
        state = repo.load_state(version.id)
        assert all(state[k].tobytes() == v.tobytes() and state[k].dtype == v.dtype for k, v in weights.items())
        assert version.stats.tensors_written == len(weights) - 1  # the copy is not written twice
        assert repo.verify().ok
        threaded = _datasets(repo, version.id)
    monkeypatch.setattr(staging, "PARALLEL_MIN_BYTES", 1 << 62)  # everything coded in the writing thread
    with Repo(tmp_path / "one" / ".mvc") as repo:
        again = repo.commit(weights, "net")
        single = _datasets(repo, again.id)
    assert again.id == version.id and threaded == single  # same bytes, same coding, whichever thread
    assert sum("mvc_coding" in attrs for _, attrs in threaded.values()) >= 10


def test_a_coding_error_in_a_worker_leaves_no_version_and_no_temporary(tmp_path, monkeypatch):
    monkeypatch.setenv("MVC_DELTA_DEPTH", "4")  # coding at commit
    original = snapshot_writer.SnapshotWriter.prepare
    calls = []

    def failing(self, array, base=None, code=True):
        calls.append(array.nbytes)
        if len(calls) == 4:
            raise RuntimeError("coder failed")
        return original(self, array, base, code)

    with Repo(tmp_path / ".mvc") as repo:
        first = repo.commit({"w": np.ones(4, np.float32)}, "net")
        monkeypatch.setattr(snapshot_writer.SnapshotWriter, "prepare", failing)
        with pytest.raises(StoreError, match="coder failed"):
            repo.commit(_weights(1), "net")
        monkeypatch.setattr(snapshot_writer.SnapshotWriter, "prepare", original)
        assert [v.id for v in repo.log("net")] == [first.id] and repo.head("net").id == first.id
        assert not list(repo.layout.tmp.iterdir())
        assert repo.verify().ok
        assert repo.commit(_weights(1), "net").id != first.id  # the next commit works


def test_ctrl_c_while_the_structure_is_serialized_stops_staging_and_leaves_nothing(tmp_path, monkeypatch):
    """The tensors are staged in a worker thread while the caller serializes the structure: an
    interrupt there waits for staging to stop, then the staged file is discarded."""
    from keras_models import dense_model

    from mvc_magics.adapters.keras import KerasAdapter

    model = dense_model()
    with Repo(tmp_path / ".mvc") as repo:
        first = repo.commit(model, "net")
        model.weights[0].assign(model.weights[0].numpy() + 1)

        def interrupted(self, model):
            raise KeyboardInterrupt

        monkeypatch.setattr(KerasAdapter, "structure", interrupted)
        with pytest.raises(KeyboardInterrupt):
            repo.commit(model, "net")
        monkeypatch.undo()
        assert [v.id for v in repo.log("net")] == [first.id]
        assert not list(repo.layout.tmp.iterdir())
        assert repo.verify().ok
        assert repo.commit(model, "net").id != first.id


@pytest.mark.parametrize("digest_of", [body_digest, body_blocks_digest])
def test_the_whole_file_checksum_does_not_hold_the_file_in_memory(tmp_path, digest_of):
    """The checksum (either kind) hashes a map of the snapshot; each hashed step's pages are given
    back, so a 100 MB file does not count 100 MB of file pages at its end (they stay in the page cache)."""
    path = tmp_path / "big.bin"
    path.write_bytes(np.random.default_rng(0).bytes(96 << 20))

    def status_kib(field):
        with open("/proc/self/status") as handle:
            return next(int(line.split()[1]) for line in handle if line.startswith(field + ":"))

    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # resets the peak (VmHWM) to the current RSS
    except OSError:
        pytest.skip("/proc/self/clear_refs is not available (not Linux)")
    before = status_kib("VmRSS")
    with open(path, "rb") as handle:
        digest = digest_of(handle, os.path.getsize(path))
    grown_mib = (status_kib("VmHWM") - before) / 1024
    assert len(digest) == 64 and grown_mib < 48, f"the checksum held {grown_mib:.0f} MiB of a 96 MiB file"
