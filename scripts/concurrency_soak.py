"""Concurrency soak: several processes commit to one store at once while a reader reads throughout.

    python scripts/concurrency_soak.py --writers 4 --versions 50      # what tests/test_concurrency.py runs
    python scripts/concurrency_soak.py --writers 8 --versions 200     # a longer run

Each writer commits its own sequence of dict-of-numpy models to the shared model ``shared`` and
moves tags (its own ``wN`` on every commit, the shared ``newest`` every fifth). A reader loops over
``log``, ``load_state`` and ``checkout`` the whole time and compares every version it sees with the
content its params say it must have: a partial or wrong version is an error. Afterwards the store
must hold exactly writers x versions versions, its index must list exactly the snapshot files, and
verify must be clean. Any failure raises ``SoakFailure``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the tree this script belongs to, not another installed copy
MODEL = "shared"


class SoakFailure(AssertionError):
    """A promise of the store did not hold under concurrent use."""


def model_for(writer: int, i: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([writer, i])
    return {
        "dense/kernel": rng.standard_normal((24, 16)).astype(np.float32),
        "dense/bias": rng.standard_normal(16).astype(np.float32),
        "id": np.array([writer, i], np.int64),
    }


def writer(store: str, number: int, versions: int) -> None:
    from mvc_magics import Repo

    with Repo(store) as repo:
        for i in range(versions):
            version = repo.commit(model_for(number, i), MODEL, message=f"w{number} #{i}",
                                  params={"writer": number, "i": i}, metrics={"loss": 1.0 / (i + 1)})
            repo.tag(version.id, f"w{number}", name=MODEL, force=True)
            if i % 5 == 0:
                repo.tag(version.id, "newest", name=MODEL, force=True)
            print(f"COMMITTED {version.id}", flush=True)


def reader(store: str, stop_file: str) -> None:
    """Read until ``stop_file`` exists; print a JSON summary; exit 1 on the first inconsistency."""
    from mvc_magics import Repo
    from mvc_magics.errors import UnknownRefError

    rng = random.Random(0)
    counts = {"logs": 0, "loads": 0, "checkouts": 0}
    while not Path(store, "FORMAT").exists():
        time.sleep(0.01)
    with Repo(store) as repo:
        while True:
            stopping = Path(stop_file).exists()
            try:
                versions = repo.log(MODEL, limit=10)
            except UnknownRefError:
                versions = []
            counts["logs"] += 1
            for version in rng.sample(list(versions), min(2, len(versions))):
                expected = model_for(int(version.params["writer"]), int(version.params["i"]))
                state = repo.load_state(version)
                if set(state) != set(expected) or any(not np.array_equal(state[k], expected[k]) for k in expected):
                    print(f"ERROR partial or wrong version {version.id}", flush=True)
                    sys.exit(1)
                counts["loads"] += 1
            if versions:
                version = rng.choice(list(versions))
                target = {k: np.zeros_like(v) for k, v in model_for(0, 0).items()}
                repo.checkout(version.id, target, name=MODEL)
                expected = model_for(int(version.params["writer"]), int(version.params["i"]))
                if any(not np.array_equal(target[k], expected[k]) for k in expected):
                    print(f"ERROR checkout of {version.id} gave other weights", flush=True)
                    sys.exit(1)
                counts["checkouts"] += 1
            if stopping:
                break
    print(json.dumps(counts), flush=True)


def _spawn(*args: str) -> subprocess.Popen:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_concurrency(store: Path, writers: int = 4, versions: int = 50, timeout: float = 600.0) -> dict:
    """Run the writers and a reader against ``store``, check everything, return the figures."""
    from mvc_magics import Repo

    store = Path(store)
    stop_file = store.parent / "stop-reader"
    started = time.time()
    read = _spawn("--reader", str(store), str(stop_file))
    procs = [_spawn("--writer", str(store), str(n), str(versions)) for n in range(writers)]
    reported: set[str] = set()
    for proc in procs:
        out, err = proc.communicate(timeout=timeout)
        if proc.returncode != 0:
            read.kill()
            raise SoakFailure(f"a writer failed ({proc.returncode}): {err[-3000:]}")
        reported.update(line.split()[1] for line in out.splitlines() if line.startswith("COMMITTED"))
    write_seconds = time.time() - started
    stop_file.write_text("stop")
    out, err = read.communicate(timeout=timeout)
    if read.returncode != 0:
        raise SoakFailure(f"the reader saw an inconsistency ({read.returncode}): {out[-2000:]} {err[-3000:]}")
    counts = json.loads(out.strip().splitlines()[-1])
    with Repo(store) as repo:
        ids = set(repo.index.version_ids())
        files = {vid for vid, _ in repo.layout.snapshot_files()}
        if len(ids) != writers * versions or ids != reported:
            raise SoakFailure(f"{len(ids)} versions indexed, {len(reported)} reported, {writers * versions} committed")
        if files != ids:
            raise SoakFailure(f"index and snapshot files differ: {sorted(files ^ ids)[:5]}")
        report = repo.verify()
        if not report.ok:
            raise SoakFailure(f"verify after the concurrent run:\n{report}")
        for n in range(writers):
            tagged = repo.resolve(f"w{n}", name=MODEL)
            if tagged.params != {"writer": n, "i": versions - 1}:
                raise SoakFailure(f"tag w{n} is on {tagged.params}, not on writer {n}'s last version")
        commits = sum(e.op == "commit" for e in repo.audit.entries())
        if commits != writers * versions:
            raise SoakFailure(f"{commits} commit entries in the audit log for {writers * versions} commits")
    return {"writers": writers, "versions": len(ids), "write_seconds": round(write_seconds, 1),
            "commits_per_second": round(len(ids) / write_seconds, 1), "reader": counts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--versions", type=int, default=50, help="versions per writer")
    parser.add_argument("--store", default=None)
    parser.add_argument("--writer", nargs=3, metavar=("STORE", "N", "VERSIONS"), help=argparse.SUPPRESS)
    parser.add_argument("--reader", nargs=2, metavar=("STORE", "STOP_FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.writer:
        writer(args.writer[0], int(args.writer[1]), int(args.writer[2]))
        return
    if args.reader:
        reader(*args.reader)
        return
    import tempfile

    store = Path(args.store) if args.store else Path(tempfile.mkdtemp(prefix="mvc-concurrency-")) / ".mvc"
    print(json.dumps(run_concurrency(store, args.writers, args.versions), indent=2))


if __name__ == "__main__":
    main()
