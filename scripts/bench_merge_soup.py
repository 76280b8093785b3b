"""Merge (weighted average) of 5 versions of dense_100mb: time / load_state of the 5 inputs and peak
RSS growth / model, 3 repetitions. Run from a tree's root (``python scripts/bench_merge_soup.py``) to
compare two commits back to back (issue 18 item 6 in docs/benchmarks.md)."""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, ".")  # the tree in the current directory, as the test suite imports it

import numpy as np

from benchmarks.measure import peak_rss_growth
from benchmarks.models import dense_stack
from mvc_magics import Repo


def main() -> None:
    bm = dense_stack(2048, 6, 1000, "dense_100mb", "Dense 6x2048 + head 1000")
    out: dict = {"tree": str(Path.cwd()), "model_bytes": bm.nbytes, "merge_s": [], "read_s": [], "rss": []}
    with tempfile.TemporaryDirectory() as tmp, Repo(Path(tmp) / ".mvc") as repo:
        ids = []
        for i in range(5):
            rng = np.random.default_rng(4000 + i)
            for variable in bm.model.weights:
                variable.assign(variable.numpy() + rng.standard_normal(1).astype(variable.dtype))
            ids.append(repo.commit(bm.model, "model").id)
        for rep in range(3):
            start = time.perf_counter()
            for vid in ids:
                repo.load_state(vid)
            out["read_s"].append(time.perf_counter() - start)
            weights = [1.0] * 4 + [1.0 + (rep + 1) / 1000]  # a new soup each repetition
            growth, seconds, _ = peak_rss_growth(lambda w=weights: repo.merge(ids, weights=w, name="model"))
            out["merge_s"].append(seconds)
            out["rss"].append((growth or 0) / bm.nbytes)
    out["ratio"] = float(np.median(np.array(out["merge_s"]) / np.array(out["read_s"])))
    out["merge_median_s"] = float(np.median(out["merge_s"]))
    out["rss_median"] = float(np.median(out["rss"]))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
