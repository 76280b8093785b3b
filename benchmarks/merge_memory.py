"""Peak memory and time of ``repo.merge`` (average, or ``--method ties`` etc.) as the number of inputs grows.

Averaging streams one tensor at a time into the commit, so the peak should stay near a few
tensors (the float64 accumulator, one input's copy, the tensor being written) whatever the number
of inputs, and well under one output model. A merge over task vectors (``--method ties``...)
holds, per tensor, one float64 task vector per input and the base: its peak grows with the inputs
by two tensors each, not by a model each. Peak is measured with tracemalloc (numpy and h5py-read
arrays are traced).

    python benchmarks/merge_memory.py [--mib 32] [--tensors 8] [--method average]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from mvc_magics import Repo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=32, help="model size in MiB (float32)")
    parser.add_argument("--tensors", type=int, default=8)
    parser.add_argument("--method", default="average", help="average, or a method over task vectors (ties...)")
    args = parser.parse_args()
    per_tensor = args.mib * 2**20 // 4 // args.tensors
    print(f"model: {args.tensors} float32 tensors, {args.mib} MiB; method {args.method}\n")
    print("| inputs | all inputs in memory would be | peak while merging | time (merge + commit) |")
    print("| --- | --- | --- | --- |")
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        repo = Repo(Path(tmp) / ".mvc")
        ids = []
        base = None
        if args.method != "average":  # the inputs' merge base: one version they all come from
            base = repo.commit({f"layer{i}/kernel": rng.standard_normal(per_tensor, dtype=np.float32)
                                for i in range(args.tensors)}, "big").id
        for count in (2, 4, 8, 16):
            while len(ids) < count:
                model = {f"layer{i}/kernel": rng.standard_normal(per_tensor, dtype=np.float32)
                         for i in range(args.tensors)}
                ids.append(repo.commit(model, "big", parents=[base] if base else None).id)
                del model
            tracemalloc.start()
            start = time.perf_counter()
            repo.merge(ids[:count], method=args.method)
            elapsed = time.perf_counter() - start
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            print(f"| {count} | {count * args.mib} MiB | {peak / 2**20:.1f} MiB | {elapsed:.2f} s |")
        repo.close()


if __name__ == "__main__":
    main()
