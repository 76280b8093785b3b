"""Merge (weighted average) of 5 versions of dense_100mb or ResNet50: time / load_state of the 5
inputs (wall and CPU) and peak RSS growth / model, 3 repetitions. Run from a tree's root
(``python scripts/bench_merge_soup.py [--model resnet50]``) to compare two commits back to back
(issue 18 item 6 in docs/benchmarks.md). ``--profile FILE`` writes a pyinstrument profile of one merge."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, ".")  # the tree in the current directory, as the test suite imports it

import numpy as np

from benchmarks.measure import peak_rss_growth
from benchmarks.models import dense_100mb, resnet50
from mvc_magics import Repo


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=("dense", "resnet50"), default="dense")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--profile", default="")
    args = parser.parse_args()
    bm = dense_100mb() if args.model == "dense" else resnet50()
    out: dict = {"tree": str(Path.cwd()), "model": bm.key, "model_bytes": bm.nbytes, "merge_s": [], "read_s": [],
                 "merge_cpu_s": [], "read_cpu_s": [], "rss": []}
    with tempfile.TemporaryDirectory() as tmp, Repo(Path(tmp) / ".mvc") as repo:
        ids = []
        for i in range(5):
            rng = np.random.default_rng(4000 + i)
            for variable in bm.model.weights:
                if str(variable.dtype).startswith("float"):
                    variable.assign(variable.numpy() + rng.standard_normal(1).astype(variable.dtype))
            ids.append(repo.commit(bm.model, "model").id)
        for rep in range(args.reps):
            cpu, start = time.process_time(), time.perf_counter()
            for vid in ids:
                repo.load_state(vid)
            out["read_s"].append(time.perf_counter() - start)
            out["read_cpu_s"].append(time.process_time() - cpu)
            weights = [1.0] * 4 + [1.0 + (rep + 1) / 1000]  # a new soup each repetition
            cpu = time.process_time()
            growth, seconds, _ = peak_rss_growth(lambda w=weights: repo.merge(ids, weights=w, name="model"))
            out["merge_cpu_s"].append(time.process_time() - cpu)
            out["merge_s"].append(seconds)
            out["rss"].append((growth or 0) / bm.nbytes)
        if args.profile:
            from pyinstrument import Profiler

            with Profiler(interval=0.001) as profiler:
                repo.merge(ids, weights=[1.0] * 4 + [0.5], name="model")
            Path(args.profile).write_text(profiler.output_text(unicode=False, color=False, show_all=False))
    out["ratio"] = float(np.median(np.array(out["merge_s"]) / np.array(out["read_s"])))
    out["cpu_ratio"] = float(np.median(np.array(out["merge_cpu_s"]) / np.array(out["read_cpu_s"])))
    out["merge_median_s"] = float(np.median(out["merge_s"]))
    out["rss_median"] = float(np.median(out["rss"]))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
