"""Push/pull/clone throughput to a folder remote and to S3 (moto server on 127.0.0.1), and gc.

    python benchmarks/remote_transfer.py [MEGABYTES]

Prints seconds and MB/s per step. Not a test: timings depend on the machine.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mvc_magics import Repo


def model(megabytes: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    per_layer = megabytes * (1 << 20) // 8 // 4
    return {f"layer{i}/kernel": rng.standard_normal(per_layer).astype(np.float32) for i in range(8)}


def timed(label: str, nbytes: int, func):
    start = time.perf_counter()
    result = func()
    seconds = time.perf_counter() - start
    print(f"{label:<44} {seconds:7.2f} s  {nbytes / (1 << 20) / seconds:8.1f} MB/s")
    return result


def run(url: str, root: Path, megabytes: int) -> None:
    nbytes = megabytes << 20
    with Repo(root / "a" / ".mvc") as a:
        w = model(megabytes, 0)
        a.commit(w, "m")
        w["layer0/kernel"] = w["layer0/kernel"] + 1  # a fine-tune of one layer: 1/8 of the bytes
        a.commit(w, "m")
        a.add_remote("origin", url)
        timed(f"push 2 versions ({megabytes * 9 // 8} MB) to {url.split(':')[0]}", nbytes * 9 // 8,
              lambda: a.push(progress=False))
        timed("re-push (nothing to send)", nbytes, lambda: a.push(progress=False))
    clone = timed("clone (download + verify every tensor)", nbytes * 9 // 8,
                  lambda: Repo.clone(url, root / "b" / ".mvc", progress=False))
    clone.remove("HEAD~1", name="m")
    freed = timed("gc after removing the first version", nbytes, clone.gc)
    print(f"{'':<44} freed {freed / (1 << 20):.1f} MB")
    clone.close()


def main() -> None:
    megabytes = int(sys.argv[1]) if len(sys.argv) > 1 else 64
    with tempfile.TemporaryDirectory() as tmp:
        run((Path(tmp) / "remote").as_uri(), Path(tmp) / "file", megabytes)
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL=f"http://{host}:{port}")
    import boto3

    boto3.client("s3").create_bucket(Bucket="bench")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            run("s3://bench/models", Path(tmp) / "s3", megabytes)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
