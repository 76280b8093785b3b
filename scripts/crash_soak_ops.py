"""Crash soak of the other writes: children SIGKILLed while they tag, remove, gc, push and pull.

    python scripts/crash_soak_ops.py --kills 30            # every mode, until 30 kills landed inside it
    python scripts/crash_soak_ops.py --mode gc --kills 5   # one mode (tests/test_crash.py runs 3 each)
    python scripts/crash_soak_ops.py --random --kills 30   # kills at random moments of the loop

Each child loops over one kind of write on dict-of-numpy models (see ``crash_soak.model_for``) and
prints what it finished. After every kill the parent opens the store (which finishes or undoes what
the child left) and checks: no journal, lock owner or stray temporary is left, ``verify()`` is clean,
no index tensor row names bytes that are gone, every ref change on disk has its audit entry, every
version reported committed (and not reported removed) is present and bit-identical, every version
reported removed is gone, and after push / pull the receiving side verifies and holds bit-identical
copies. Figures go to docs/reliability.md.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import crash_soak  # noqa: E402  (the commit soak's models, child process and failure type)
from crash_soak import MODEL, ChildProcess, SoakFailure, model_for  # noqa: E402

MODES = ("tag", "remove", "gc", "push", "pull")
PULL_SEED, PULL_VERSIONS = 777, 12


def big_model(seed: int, n: int) -> dict[str, np.ndarray]:
    """model_for plus a 1 MB tensor, so a pull or push takes long enough to be killed inside."""
    model = model_for(seed, n)
    model["big"] = np.random.default_rng([seed, n, 1]).standard_normal(256 * 1024).astype(np.float32)
    return model


# -- the children ----------------------------------------------------------------------------------


def child(mode: str, store: str, seed: int, remote: str) -> None:
    from mvc_magics import Repo

    rng = random.Random(seed)
    repo = Repo(store)
    print("READY", flush=True)
    if mode == "pull":
        print("BEGIN pull", flush=True)
        repo.pull(remote)
        print("END pull", flush=True)
        print("PULLED", flush=True)
        sys.stdin.readline()  # wait for the kill (a child that ends by itself is a soak failure)
        return
    n, mine = 0, []
    while True:
        n += 1
        make = big_model if mode == "push" else model_for
        version = repo.commit(make(seed, n), MODEL, message=f"{seed}/{n}")
        mine.append(version.id)
        print(f"COMMITTED {version.id} {seed} {n} {int(make is big_model)}", flush=True)
        if mode == "tag":
            for _ in range(3):
                vid = rng.choice(mine)
                print("BEGIN tag", flush=True)
                repo.tag(vid, "production", name=MODEL, force=True, protect=rng.random() < 0.5)
                print(f"TAGGED {vid}", flush=True)
                print("END tag", flush=True)
        elif mode in ("remove", "gc") and len(mine) > 2:
            vid = mine.pop(rng.randrange(len(mine) - 1))
            print(f"REMOVING {vid}", flush=True)
            print("BEGIN remove", flush=True)
            repo.remove(vid, name=MODEL, force=True)
            print(f"REMOVED {vid}", flush=True)
            print("END remove", flush=True)
            if mode == "gc":
                print("BEGIN gc", flush=True)
                repo.gc()
                print("END gc", flush=True)
        elif mode == "push":
            print("BEGIN push", flush=True)
            repo.push(remote)
            print(f"PUSHED {' '.join(mine)}", flush=True)
            print("END push", flush=True)


# -- the parent ------------------------------------------------------------------------------------


def _identical(repo, vid: str, model: dict[str, np.ndarray]) -> bool:
    state = repo.load_state(vid)
    return set(state) == set(model) and all(
        np.array_equal(state[k], model[k]) and state[k].dtype == model[k].dtype for k in model)


def stale_tensor_rows(repo) -> int:
    """Index rows locating a tensor in a file that is gone or does not hold it."""
    from mvc_magics.storage.snapshots.retired import held_hashes

    stale, held = 0, {}
    for digest, obj in repo.index.query("SELECT hash, object FROM tensors"):
        path = repo.layout.snapshot_path(obj)
        if obj not in held:
            held[obj] = held_hashes(path) if path.is_file() else set()
        stale += digest not in held[obj]
    return stale


def check(store: Path, mode: str, reported: dict[str, tuple[int, int, int]], removed: set[str],
          recheck: list[str], stats: dict, remote: str, pushed: set[str], maybe: frozenset = frozenset()) -> None:
    from mvc_magics import Repo

    with Repo(store) as repo:
        layout = repo.layout
        left = [p.name for p in layout.tmp.iterdir()] if layout.tmp.is_dir() else []
        if left or layout.owner_path.exists() or layout.journal_path.exists():
            raise SoakFailure(f"{mode}: left after the next open: tmp {left}, lock.owner/journal present")
        report = repo.verify()
        stats["verify_problems"] += len(report.problems)
        stale = stale_tensor_rows(repo)
        stats["stale_tensor_rows"] += stale
        stats["kills_leaving_stale_rows"] = stats.get("kills_leaving_stale_rows", 0) + (stale > 0)
        if not report.ok or stats["stale_tensor_rows"]:
            raise SoakFailure(f"{mode}: after the kill:\n{report}\nstale tensor rows: {stats['stale_tensor_rows']}")
        present = set(repo.index.version_ids())
        identical = 0
        for vid in recheck:
            seed, n, big = reported[vid]
            if vid in removed:
                if vid in present:
                    raise SoakFailure(f"{mode}: version {vid[:12]} reported removed is still there")
                continue
            if vid in maybe and vid not in present:
                continue  # its removal was in flight when the child was killed, and completed
            if vid not in present or not _identical(repo, vid, (big_model if big else model_for)(seed, n)):
                raise SoakFailure(f"{mode}: reported version {vid[:12]} is missing or not bit-identical")
            stats["versions_checked_identical"] += 1
            identical += 1
        if set(recheck) >= set(reported):  # a full check: the figure for the report
            stats["present_identical"] = identical
            stats["present_expected"] = len(set(reported) - removed - (maybe - present))
        tag = layout.read_tag(MODEL, "production")
        if tag is not None:
            moves = [e for e in repo.audit.entries()
                     if e.op == "tag" and e.name == MODEL and e.detail.get("tag") == "production"]
            if not moves or moves[-1].ids != [tag[0]] or moves[-1].detail.get("protected") != tag[1]:
                stats["unaudited_ref_changes"] += 1
                raise SoakFailure(f"{mode}: tag production -> {tag[0][:12]} has no audit entry for that move")
    if mode == "push" and pushed:
        _check_remote(remote, reported, pushed, stats)


def _check_remote(remote: str, reported: dict, pushed: set[str], stats: dict) -> None:
    from mvc_magics import Repo

    folder = Path(tempfile.mkdtemp(prefix="mvc-soak-clone-"))
    try:
        with Repo(folder / ".mvc") as clone:
            clone.pull(remote)
            if not clone.verify().ok:
                raise SoakFailure(f"push: a pull of the remote does not verify:\n{clone.verify()}")
            present = set(clone.index.version_ids())
            for vid in pushed:
                seed, n, big = reported[vid]
                if vid not in present or not _identical(clone, vid, (big_model if big else model_for)(seed, n)):
                    raise SoakFailure(f"push: version {vid[:12]} reported pushed is not on the remote intact")
            stats["remote_versions_identical"] = len(pushed)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _pull_source(folder: Path) -> tuple[str, dict[str, tuple[int, int, int]]]:
    from mvc_magics import Repo

    remote = (folder / "pull-remote").as_uri()
    reported = {}
    with Repo(folder / "source" / ".mvc") as source:
        for n in range(1, PULL_VERSIONS + 1):
            reported[source.commit(big_model(PULL_SEED, n), MODEL).id] = (PULL_SEED, n, 1)
        source.push(remote)
    return remote, reported


# How long after "BEGIN <op>" a targeted kill may come (about the operation's duration here).
WINDOW = {"tag": 0.03, "remove": 0.05, "gc": 0.15, "push": 0.6, "pull": 2.0}


def _wait_for(proc: ChildProcess, text: str, count: int, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.proc.poll() is None:
        if sum(line == text for line in list(proc.lines)) >= count:
            return True
        time.sleep(0.002)
    return False


def run_mode(mode: str, kills: int, folder: Path, seed: int = 0, max_delay: float = 0.6, log=None,
             targeted: bool = False) -> dict:
    """Children of one mode, each killed at a random moment, until ``kills`` kills (``targeted``:
    until ``kills`` of them landed inside the operation, each killed 0..WINDOW s after it began,
    giving up after three times as many children); the figures."""
    rng = random.Random(f"{mode}-{seed}")
    folder.mkdir(parents=True, exist_ok=True)
    store, remote = folder / ".mvc", (folder / "remote").as_uri()
    reported: dict[str, tuple[int, int, int]] = {}
    removed: set[str] = set()
    pushed: set[str] = set()
    in_flight: set[str] = set()
    stats = {"mode": mode, "kills": 0, "versions_reported": 0, "removals_reported": 0, "tag_moves_reported": 0,
             "verify_problems": 0, "stale_tensor_rows": 0, "unaudited_ref_changes": 0,
             "versions_checked_identical": 0, "kills_before_done": 0, "kills_inside_op": 0}
    if mode == "pull":
        remote, source_versions = _pull_source(folder)
    started = time.time()
    k = -1
    while (stats["kills_inside_op"] < kills and k < 3 * kills - 1) if targeted else k < kills - 1:
        k += 1
        if mode == "pull":
            store = folder / f"pull-{k}" / ".mvc"
        proc = ChildProcess("--child", mode, str(store), str(rng.randrange(1, 2**31)), remote,
                            script=Path(__file__).resolve())
        proc.wait_ready(120)
        if targeted:
            _wait_for(proc, f"BEGIN {mode}", rng.randint(1, 3 if mode in ("tag", "remove") else 1))
            time.sleep(rng.uniform(0.0, WINDOW[mode]))
        else:
            time.sleep(rng.uniform(0.0, max_delay * (4 if mode == "pull" else 1)))  # a pull takes seconds
        proc.kill()
        stats["kills"] += 1
        new = []
        for line in proc.lines:
            parts = line.split(" ")
            if parts[0] == "COMMITTED":
                reported[parts[1]] = (int(parts[2]), int(parts[3]), int(parts[4]))
                new.append(parts[1])
            elif parts[0] == "REMOVING":
                in_flight.add(parts[1])  # killed before REMOVED: gone or intact, both are fine
            elif parts[0] == "REMOVED":
                in_flight.discard(parts[1])
                removed.add(parts[1])
                stats["removals_reported"] += 1
            elif parts[0] == "TAGGED":
                stats["tag_moves_reported"] += 1
            elif parts[0] == "PUSHED":
                pushed.update(parts[1:])
        stats["versions_reported"] += len(new)
        begun = [line.split(" ", 1)[1] for line in proc.lines if line.startswith("BEGIN ")]
        ended = [line.split(" ", 1)[1] for line in proc.lines if line.startswith("END ")]
        if len(begun) > len(ended) and begun[-1] == mode:  # killed inside the operation this mode soaks
            stats["kills_inside_op"] += 1
        stats["kills_before_done"] += "PULLED" not in proc.lines if mode == "pull" else 0
        if mode == "pull":
            check(store, mode, source_versions, set(), _present(store), stats, remote, set())
            stats["versions_present_after_kill"] = stats.get("versions_present_after_kill", 0) + len(_present(store))
        else:
            full = (k + 1) % 10 == 0
            check(store, mode, reported, removed, list(reported) if full else new + sorted(removed & set(new)),
                  stats, remote, pushed if full else set(), frozenset(in_flight))
        if log:
            log(f"{mode} kill {k + 1}: {len(new)} reported, {stats['kills_inside_op']} inside {mode} so far")
    if mode != "pull":  # the last word: every reported version, re-read bit for bit
        check(store, mode, reported, removed, list(reported), stats, remote, pushed, frozenset(in_flight))
    stats["seconds"] = round(time.time() - started, 1)
    return stats


def _present(store: Path) -> list[str]:
    from mvc_magics import Repo

    with Repo(store) as repo:
        return repo.index.version_ids()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=30)
    parser.add_argument("--mode", choices=MODES, action="append")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-delay", type=float, default=0.6)
    parser.add_argument("--random", action="store_true",
                        help="kill at a random moment of the loop instead of inside the operation")
    parser.add_argument("--child", nargs=4, metavar=("MODE", "STORE", "SEED", "REMOTE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]), args.child[3])
        return
    results = []
    for mode in args.mode or MODES:
        folder = Path(tempfile.mkdtemp(prefix=f"mvc-crash-soak-{mode}-"))
        results.append(run_mode(mode, args.kills, folder, args.seed, args.max_delay,
                                log=lambda text: print(text, file=sys.stderr, flush=True), targeted=not args.random))
        shutil.rmtree(folder, ignore_errors=True)
    print(json.dumps(results, indent=2))


assert crash_soak.MODEL == MODEL

if __name__ == "__main__":
    main()
