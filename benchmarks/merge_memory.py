"""Peak memory and time of ``repo.merge`` (average) as the number of inputs grows.

Averaging streams one tensor at a time into the commit, so the peak should stay near a few
tensors (the float64 accumulator, one input's copy, the tensor being written) whatever the number
of inputs, and well under one output model. Peak is measured with tracemalloc (numpy and
h5py-read arrays are traced).

    python benchmarks/merge_memory.py [--mib 32] [--tensors 8]
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
    args = parser.parse_args()
    per_tensor = args.mib * 2**20 // 4 // args.tensors
    print(f"model: {args.tensors} float32 tensors, {args.mib} MiB\n")
    print("| inputs | all inputs in memory would be | peak while merging | time (merge + commit) |")
    print("| --- | --- | --- | --- |")
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        repo = Repo(Path(tmp) / ".mvc")
        ids = []
        for count in (2, 4, 8, 16):
            while len(ids) < count:
                model = {f"layer{i}/kernel": rng.standard_normal(per_tensor, dtype=np.float32)
                         for i in range(args.tensors)}
                ids.append(repo.commit(model, "big").id)
                del model
            tracemalloc.start()
            start = time.perf_counter()
            repo.merge(ids[:count])
            elapsed = time.perf_counter() - start
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            print(f"| {count} | {count * args.mib} MiB | {peak / 2**20:.1f} MiB | {elapsed:.2f} s |")
        repo.close()


if __name__ == "__main__":
    main()
