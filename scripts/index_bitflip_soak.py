"""Single-bit flips in index.sqlite: each is detected by verify(), or cannot change what a ref names.

For every sampled flip (seeded) the store is opened, every ref (HEAD, HEAD~1, latest, best:..., the
tags, the short ids) is resolved, the log is read and ``best:val_loss`` is checked out; then
verify runs. A flip fails the run when a ref resolves differently while verify says OK, or when any
of these raises anything but the project's typed errors (a raw JSONDecodeError or KeyError).

    python scripts/index_bitflip_soak.py --flips 5000 --seed 1

tests/test_integrity.py runs 120 flips of the same harness (17 of them detected or refused).
"""

from __future__ import annotations

import argparse
import random
import shutil
import sqlite3
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from mvc_magics import Repo
from mvc_magics.errors import MVCError

REFS = ("HEAD", "HEAD~1", "latest", "latest~2", "best:val_loss", "best:acc", "baseline", "candidate")


def build_store(path: Path) -> None:
    """Two models, five versions, metrics, tags and HEADs; the index checkpointed into one file."""
    rng = np.random.default_rng(0)
    with Repo(path) as repo:
        for i in range(4):
            weights = {"dense/kernel": rng.standard_normal((4, 3)).astype(np.float32),
                       "dense/bias": np.full(3, i, np.float32)}
            tags = ["baseline"] if i == 0 else ["candidate"] if i == 2 else []
            repo.commit(weights, "model", metrics={"val_loss": [0.5, 0.2, 0.3, 0.25][i], "acc": 0.6 + i / 20},
                        tags=tags)
        repo.commit({"w": np.ones(2, np.float32)}, "other", metrics={"val_loss": 0.1})
        repo.checkout("candidate", name="model")
    conn = sqlite3.connect(path / "index.sqlite")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def observe(repo: Repo) -> dict:
    """What the refs name and the log lists; typed errors are recorded as refusals."""
    seen: dict = {}
    for ref in REFS:
        try:
            seen[ref] = repo.resolve(ref, name="model").id
        except MVCError as exc:
            seen[ref] = f"refused: {type(exc).__name__}"
    try:
        seen["log"] = [v.id for v in repo.log()]
        seen["ids"] = sorted(repo.resolve(v.short_id).id for v in repo.log("model"))
    except MVCError as exc:
        seen["log"] = f"refused: {type(exc).__name__}"
    try:  # what a checkout of best:val_loss would load (without moving HEAD: observing only)
        loaded = repo.load_state(repo.resolve("best:val_loss", name="model"))
        seen["loaded"] = float(loaded["dense/bias"][0])
    except MVCError as exc:
        seen["loaded"] = f"refused: {type(exc).__name__}"
    return seen


def flip_once(pristine: Path, work: Path, offset: int, bit: int, baseline: dict) -> str:
    """Restore ``work``'s index from ``pristine``, flip one bit of it, classify what happened.

    Observing and verifying write nothing but the index (rebuilt when found damaged), so only the
    index and its WAL files are restored between flips.
    """
    if not work.exists():
        shutil.copytree(pristine, work)
    for suffix in ("-wal", "-shm"):
        Path(str(work / "index.sqlite") + suffix).unlink(missing_ok=True)
    index = work / "index.sqlite"
    data = bytearray((pristine / "index.sqlite").read_bytes())
    data[offset] ^= 1 << bit
    index.write_bytes(bytes(data))
    try:
        with Repo(work) as repo:
            seen = observe(repo)
            ok = repo.verify().ok
    except MVCError:
        return "refused"  # opening or verifying the store said, in a typed error, that it is damaged
    except Exception as exc:  # any other exception is exactly what this run hunts
        return f"RAW {type(exc).__name__}: {str(exc)[:80]}"
    if not ok:
        return "detected"
    if seen != baseline:
        changed = sorted(k for k in baseline if seen.get(k) != baseline[k])
        return f"SILENT change of {', '.join(changed)}"
    return "harmless"


def run(folder: Path, flips: int, seed: int) -> Counter:
    """Flip ``flips`` sampled bits (seeded); return a count of each outcome (failures spelled out)."""
    pristine, work = folder / "pristine", folder / "work"
    build_store(pristine)
    with Repo(pristine) as repo:
        baseline = observe(repo)
    size = (pristine / "index.sqlite").stat().st_size
    rng = random.Random(seed)
    outcomes: Counter = Counter()
    for _ in range(flips):
        offset, bit = rng.randrange(size), rng.randrange(8)
        outcome = flip_once(pristine, work, offset, bit, baseline)
        failed = outcome.split()[0] in {"RAW", "SILENT"}
        outcomes[f"{outcome} (byte {offset} bit {bit})" if failed else outcome] += 1
    return outcomes


def main() -> None:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flips", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        outcomes = run(Path(tmp), args.flips, args.seed)
    for outcome, count in sorted(outcomes.items()):
        print(f"{count:6d}  {outcome}")
    sys.exit(1 if any(o.split()[0] in {"RAW", "SILENT"} for o in outcomes) else 0)


if __name__ == "__main__":
    main()
