"""How fast compare and diff are, and how little diff reads: ``python benchmarks/compare_diff.py [FOLDER]``.

Builds a dict-of-numpy model of 24 layers x (512x512 kernel + bias) (~25 MiB), commits a base and
a fine-tune that changed one layer, then times ``repo.diff`` (bytes read vs model size), and
``repo.compare`` / a panel refresh over 100 versions with three metrics.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mvc_magics import Repo  # noqa: E402
from mvc_magics.core.tables import format_bytes  # noqa: E402


def best_of(fn, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(folder: str | None = None) -> None:
    path = Path(folder or tempfile.mkdtemp()) / ".mvc"
    rng = np.random.default_rng(0)
    model = {}
    for i in range(24):
        model[f"layer_{i:02d}/kernel"] = rng.standard_normal((512, 512)).astype(np.float32)
        model[f"layer_{i:02d}/bias"] = rng.standard_normal(512).astype(np.float32)
    size = sum(a.nbytes for a in model.values())
    with Repo(path) as repo:
        base = repo.commit(model, "big", metrics={"val_loss": 1.0})
        tuned = dict(model)
        tuned["layer_23/kernel"] = model["layer_23/kernel"] + 0.01
        head = repo.commit(tuned, "big", metrics={"val_loss": 0.9})
        diff = repo.diff(base.id, head.id)
        elapsed = best_of(lambda: repo.diff(base.id, head.id))
        print(f"diff of a {format_bytes(size)} model, one 1 MiB layer changed: {elapsed * 1000:.1f} ms, "
              f"read {diff.tensors_read} tensors / {format_bytes(diff.bytes_read)} "
              f"({diff.bytes_read / (2 * size):.1%} of both versions); changed layers {diff.changed_layers}")
        small = {"w": np.zeros(4, np.float32)}
        for i in range(100):
            small["w"] = np.full(4, i, np.float32)
            repo.commit(small, "small", metrics={"acc": float(rng.random()), "latency_ms": float(rng.random() * 100),
                                                 "val_loss": float(rng.random())})
        elapsed = best_of(lambda: repo.compare(name="small", limit=None))
        print(f"compare 100 versions x 3 metrics (store query + math): {elapsed * 1000:.1f} ms")
        cmp = repo.compare(name="small", limit=None)
        elapsed = best_of(lambda: cmp.reweighted({"acc": 2, "latency_ms": 1}))
        print(f"reweight 100 versions (math only): {elapsed * 1000:.1f} ms")
        try:
            panel = repo.compare_panel(name="small", limit=20)
        except ImportError:
            return
        slider = panel.slider("acc")
        values = iter(np.linspace(0.1, 4.9, 100))
        elapsed = best_of(lambda: setattr(slider, "value", float(next(values))), repeat=5)
        print(f"panel refresh on a slider move, 20 versions, with chart: {elapsed * 1000:.1f} ms")
        panel._chart_enabled = False
        elapsed = best_of(lambda: setattr(slider, "value", float(next(values))), repeat=5)
        print(f"panel refresh on a slider move, 20 versions, table only: {elapsed * 1000:.1f} ms")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
