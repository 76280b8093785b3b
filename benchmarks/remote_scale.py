"""A remote with a long history, on a real SeaweedFS cluster on 127.0.0.1 (tests/seaweed.py):
requests and seconds of pull with nothing new, push of one new version, pull of one new version and
a clone, as the history grows. Every S3 request is counted (TransferReport.requests: a botocore hook).

    python benchmarks/remote_scale.py [VERSIONS] [--quick]

VERSIONS (default 10000) tiny versions are committed (a few floats each, so the history is cheap to
make) and pushed in pushes of 50, so the remote's log has VERSIONS / 50 segments and checkpoints.
Measured at 100, 1000 and VERSIONS versions. --quick: 100 and 500.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from seaweed import ROLES, start_cluster  # noqa: E402

from mvc_magics import Repo  # noqa: E402

PUSH_EVERY = 50


def tiny(i: int) -> dict[str, np.ndarray]:
    return {"w": np.full(4, i, np.float32)}


def timed(func):
    start = time.perf_counter()
    result = func()
    return result, time.perf_counter() - start


def grow(a: Repo, have: int, want: int) -> int:
    """Commit and push versions ``have .. want-1``. Making the history is not what is measured, so
    fsync is skipped meanwhile (the local store's durability is docs/reliability.md's subject)."""
    real_fsync, os.fsync = os.fsync, lambda fd: None
    try:
        for i in range(have, want):
            a.commit(tiny(i), "m")
            if (i + 1) % PUSH_EVERY == 0:
                a.push(progress=False)
        a.push(progress=False)
    finally:
        os.fsync = real_fsync
    return want


def measure(root: Path, a: Repo, url: str, versions: int) -> dict:
    with Repo(root / f"clone{versions}" / ".mvc") as clone:
        full, full_s = timed(lambda: clone.pull(url, progress=False))  # a clone: fetch everything
        nothing, nothing_s = timed(lambda: clone.pull(url, progress=False))
        a.commit(tiny(10_000_000 + versions), "m")
        push_one, push_s = timed(lambda: a.push(progress=False))
        pull_one, pull_s = timed(lambda: clone.pull(url, progress=False))
    assert len(pull_one.versions) == 1 and nothing.versions == [] and len(full.versions) == versions
    return {"versions": versions,
            "pull, nothing new": (nothing.requests, nothing_s),
            "push one new": (push_one.requests, push_s),
            "pull one new": (pull_one.requests, pull_s),
            "clone (fetch everything)": (full.requests, full_s)}


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    sizes = [100, 500] if "--quick" in sys.argv else [100, 1000, int(args[0]) if args else 10_000]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cluster = start_cluster(root / "weed")
        key, secret = ROLES["admin"]
        os.environ.update(AWS_ACCESS_KEY_ID=key, AWS_SECRET_ACCESS_KEY=secret, AWS_DEFAULT_REGION="us-east-1",
                          AWS_ENDPOINT_URL=cluster.endpoint)
        url = "s3://mvc/scale/models"
        rows = []
        try:
            with Repo(root / "a" / ".mvc") as a:
                a.add_remote("origin", url)
                have = 0
                for size in sizes:
                    start = time.perf_counter()
                    have = grow(a, have, size)
                    print(f"history of {size} versions made in {time.perf_counter() - start:.0f} s", flush=True)
                    rows.append(measure(root, a, url, size))
                    have += 1  # measure() committed one more
                    print(rows[-1], flush=True)
        finally:
            cluster.stop()
    print()
    print("| operation | " + " | ".join(f"{r['versions']:,} versions" for r in rows) + " |")
    print("| --- |" + " --- |" * len(rows))
    for op in ("pull, nothing new", "push one new", "pull one new", "clone (fetch everything)"):
        cells = [f"{r[op][0]} requests, {r[op][1]:.2f} s" for r in rows]
        print(f"| {op} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
