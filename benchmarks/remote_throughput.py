"""Push/pull throughput of a large history against a raw s3fs upload/download of the same bytes, on
a real SeaweedFS cluster on 127.0.0.1 (tests/seaweed.py), with the peak memory of each.

    python benchmarks/remote_throughput.py [MEGABYTES] [--quick]

MEGABYTES (default 1024) of history: 8 versions of MEGABYTES/8 each (every version changes every
tensor, so each snapshot file is ~MEGABYTES/8). Each operation runs in its own process, which reports
its seconds and its peak RSS growth over its start (sampled every 10 ms, after the imports). --quick: 128 MB.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from seaweed import ROLES, start_cluster  # noqa: E402

from mvc_magics import Repo  # noqa: E402

VERSIONS = 8

CHILD = """
import json, os, sys, threading, time
sys.path[:0] = [{root!r}]
import s3fs
from mvc_magics import Repo

def rss():  # the current resident set, in bytes
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

start_rss, peak, done = rss(), [0], threading.Event()

def sample():
    while not done.is_set():
        peak[0] = max(peak[0], rss())
        time.sleep(0.01)

threading.Thread(target=sample, daemon=True).start()
t = time.perf_counter()
{body}
seconds = time.perf_counter() - t
done.set()
print(json.dumps({{"seconds": seconds, "rss_growth_mb": max(0, peak[0] - start_rss) / (1 << 20)}}))
"""

BODIES = {
    "push": "Repo({store!r}).push({url!r}, progress=False)",
    "pull (clone)": "Repo.clone({url!r}, {target!r}, progress=False)",
    "s3fs put": "fs = s3fs.S3FileSystem(); fs.put({files!r}, {raw_keys!r})",
    "s3fs get": "fs = s3fs.S3FileSystem(); fs.get({raw_keys!r}, {raw_local!r})",
}


def run(name: str, **values) -> dict:
    code = CHILD.format(root=str(ROOT), body=BODIES[name].format(**values))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{name} failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    megabytes = 128 if "--quick" in sys.argv else int(args[0]) if args else 1024
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cluster = start_cluster(root / "weed", volume_size_mb=512)  # 2 copies of 2 GB fit in 30 volumes
        key, secret = ROLES["admin"]
        os.environ.update(AWS_ACCESS_KEY_ID=key, AWS_SECRET_ACCESS_KEY=secret, AWS_DEFAULT_REGION="us-east-1",
                          AWS_ENDPOINT_URL=cluster.endpoint)
        try:
            store = root / "a" / ".mvc"
            rng = np.random.default_rng(0)
            per_version = megabytes * (1 << 20) // VERSIONS
            with Repo(store) as a:
                for _ in range(VERSIONS):
                    a.commit({f"layer{j}": rng.standard_normal(per_version // 4 // 4).astype(np.float32)
                              for j in range(4)}, "m")
                files = sorted(str(p) for _, p in a.store.layout.snapshot_files())
            sizes = [os.path.getsize(f) for f in files]
            total = sum(sizes)
            raw_keys = [f"mvc/raw/{Path(f).name}" for f in files]
            (root / "raw").mkdir()
            values = {"store": str(store), "url": "s3://mvc/history", "target": str(root / "b" / ".mvc"),
                      "files": files, "raw_keys": raw_keys, "raw_local": [str(root / "raw" / Path(f).name)
                                                                         for f in files]}
            results = {name: run(name, **values) for name in ("s3fs put", "push", "s3fs get", "pull (clone)")}
        finally:
            cluster.stop()
    mb = total / (1 << 20)
    print(f"history: {VERSIONS} snapshot files, {mb:.0f} MB (largest {max(sizes) / (1 << 20):.0f} MB)")
    print("| operation | seconds | MB/s | ratio to raw s3fs | peak RSS growth (MB) |")
    print("| --- | --- | --- | --- | --- |")
    for name, raw in (("s3fs put", None), ("push", "s3fs put"), ("s3fs get", None), ("pull (clone)", "s3fs get")):
        r = results[name]
        ratio = f"{results[raw]['seconds'] / r['seconds']:.2f}x" if raw else "1 (baseline)"
        print(f"| {name} | {r['seconds']:.1f} | {mb / r['seconds']:.0f} | {ratio} | {r['rss_growth_mb']:.0f} |")


if __name__ == "__main__":
    main()
