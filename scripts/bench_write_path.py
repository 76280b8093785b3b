"""The commit's write path, measured: first commit vs safetensors, and the write-path settings.

    python scripts/bench_write_path.py first-commit resnet50,dense_100mb 5
    python scripts/bench_write_path.py toggles resnet50 6

``first-commit``: a first commit into a fresh store against safetensors ``save_file`` + fsync of
the same variables, back to back, ``os.sync()`` before each timed call (wall and CPU time; the
``benchmarks.coding`` case). ``toggles``: in one process, alternating, 6 commits each with early
writeback on/off and with new tensors coded in worker threads or in the writing thread (the
snapshot's own fsync is timed too). Figures in docs/benchmarks.md ("The write path").
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("MVC_PROGRESS", "0")


def first_commit(keys: list[str], reps: int) -> None:
    import safetensors.numpy as st

    from benchmarks.cli import BUILDERS
    from mvc_magics import Repo

    for key in keys:
        bm, rows = BUILDERS[key](), []
        with tempfile.TemporaryDirectory() as tmp:
            for rep in range(reps):
                path = Path(tmp) / f"p{rep}.safetensors"
                os.sync()
                wall, cpu = time.perf_counter(), time.process_time()
                named = {f"{i}:{v.path}": np.asarray(v.numpy()) for i, v in enumerate(bm.model.weights)}
                st.save_file(named, str(path))
                with open(path, "rb+") as handle:
                    os.fsync(handle.fileno())
                theirs = (time.perf_counter() - wall, time.process_time() - cpu)
                with Repo(Path(tmp) / f"s{rep}" / ".mvc") as repo:
                    os.sync()
                    wall, cpu = time.perf_counter(), time.process_time()
                    repo.commit(bm.model, "model")
                    ours = (time.perf_counter() - wall, time.process_time() - cpu)
                rows.append((ours[0] / theirs[0], *ours, *theirs))
        med = [float(np.median([r[i] for r in rows])) for i in range(5)]
        print(f"{key}: first commit / safetensors {med[0]:.2f} (all {[round(r[0], 2) for r in rows]}); ours "
              f"{med[1] * 1e3:.0f} ms, CPU {med[2] * 1e3:.0f} ms; safetensors {med[3] * 1e3:.0f} ms, "
              f"CPU {med[4] * 1e3:.0f} ms", flush=True)


def toggles(key: str, reps: int) -> None:
    from benchmarks.cli import BUILDERS
    from mvc_magics import Repo
    from mvc_magics.storage.files import atomic
    from mvc_magics.storage.snapshots import snapshot_writer, staging

    bm = BUILDERS[key]()
    fsync, last = atomic.fsync_path, {}

    def timed(path: Path) -> None:
        start = time.perf_counter()
        fsync(path)
        if path.name.startswith(atomic.TMP_PREFIX) and path.suffix == ".h5":
            last["snapshot"] = time.perf_counter() - start

    atomic.fsync_path = timed
    settings = {
        "early writeback on": (16 << 20, staging.PARALLEL_MIN_BYTES),
        "early writeback off": (1 << 62, staging.PARALLEL_MIN_BYTES),
        "coded in worker threads": (16 << 20, staging.PARALLEL_MIN_BYTES),
        "coded in the writing thread": (16 << 20, 1 << 62),
    }
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in settings}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(reps):
            for n, (name, (writeback, parallel)) in enumerate(settings.items()):
                snapshot_writer.WRITEBACK_BYTES, staging.PARALLEL_MIN_BYTES = writeback, parallel
                with Repo(Path(tmp) / f"{n}-{rep}" / ".mvc") as repo:
                    os.sync()
                    wall, cpu = time.perf_counter(), time.process_time()
                    repo.commit(bm.model, "model")
                    results[name].append((time.perf_counter() - wall, time.process_time() - cpu, last["snapshot"]))
    for name, rows in results.items():
        wall, cpu, snap = (float(np.median([r[i] for r in rows])) * 1e3 for i in range(3))
        print(f"{key} {name}: commit {wall:.0f} ms, CPU {cpu:.0f} ms, snapshot fsync {snap:.0f} ms", flush=True)


if __name__ == "__main__":
    mode, models, reps = sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 5
    if mode == "first-commit":
        first_commit(models.split(","), reps)
    else:
        toggles(models.split(",")[0], reps)
