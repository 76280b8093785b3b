"""What autocommit costs per cell: ``python benchmarks/autocommit.py [MEGABYTES]``.

Runs cells in a real IPython shell with ``%mvc_autocommit`` on a dict-of-numpy model (default
100 MB, ten layers) and reports the median time of a cell that does not touch the weights, with
and without autocommit, next to one raw BLAKE3 pass over the same bytes (the floor: change
detection has to look at every byte), and the time of a cell that changes the last layer.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mvc_magics.core.hashing import tensor_hash  # noqa: E402


def median_time(fn, repeat: int = 7) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(megabytes: float = 100.0) -> None:
    from IPython.core.interactiveshell import InteractiveShell

    folder = tempfile.mkdtemp(prefix="mvc-autocommit-")
    os.chdir(folder)
    shell = InteractiveShell.instance()
    shell.history_manager.enabled = False
    shell.run_line_magic("load_ext", "mvc_magics")
    columns = max(1, int(megabytes * 1e6 / 4 / 10 / 1000))
    rng = np.random.default_rng(0)
    model = {f"layer{i}/kernel": rng.standard_normal((1000, columns)).astype(np.float32) for i in range(10)}
    nbytes = sum(a.nbytes for a in model.values())
    shell.user_ns["model"] = model

    without = median_time(lambda: shell.run_cell("x = 1"))
    shell.run_cell("%mvc_autocommit model")
    unchanged = median_time(lambda: shell.run_cell("x = 1"))
    raw = median_time(lambda: [tensor_hash(a) for a in model.values()])
    start = time.perf_counter()
    shell.run_cell("model['layer9/kernel'] = model['layer9/kernel'] * 1.01")
    changed = time.perf_counter() - start
    versions = shell.run_line_magic("mvc_log", "model")
    shell.run_line_magic("unload_ext", "mvc_magics")
    os.chdir(ROOT)
    shutil.rmtree(folder, ignore_errors=True)

    print(f"model: {nbytes / 1e6:.0f} MB in 10 tensors")
    print(f"cell without autocommit:          {without * 1e3:8.2f} ms")
    print(f"cell with autocommit, unchanged:  {unchanged * 1e3:8.2f} ms  (no version created)")
    print(f"raw BLAKE3 pass over the weights: {raw * 1e3:8.2f} ms  (ratio {unchanged / raw:.2f}x)")
    print(f"cell changing the last layer:     {changed * 1e3:8.2f} ms  (1 version, 1 tensor written)")
    print(f"versions: {len(versions)}")


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 100.0)
