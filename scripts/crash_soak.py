"""Crash soak: child processes commit in a loop and are SIGKILLed at random moments.

    python scripts/crash_soak.py --kills 200            # the long run (docs/reliability.md)
    python scripts/crash_soak.py --kills 20 --seed 7    # what tests/test_crash.py runs

Each child opens the store and loops over commits of dict-of-numpy models (small and large, new
and partly shared tensors), tag moves, re-commits of stored content with metrics, and checkouts,
printing what it finished on stdout (flushed). After every kill the parent opens the store and
checks: verify is clean, every version reported committed is present and bit-identical, the commit
in flight is absent or complete (snapshot, tags, HEAD, audit entry) and no stray temporaries remain.
Any failure raises ``SoakFailure`` with the details.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the tree this script belongs to, not another installed copy
MODEL = "m"


class SoakFailure(AssertionError):
    """A promise of the store did not hold after a kill."""


def model_for(seed: int, n: int) -> dict[str, np.ndarray]:
    """The deterministic model a child commits as its n-th version (the parent rebuilds it to compare).

    Mostly small tensors; sometimes a 0.25-2 MB one (so kills land inside HDF5 writes); every other
    version shares its embedding with the previous one (its bytes live in another snapshot file).
    """
    rng = np.random.default_rng([seed, n])
    shared = np.random.default_rng([seed, n - n % 2]).standard_normal((32, 16)).astype(np.float32)
    model = {
        "embed": shared,
        "dense/kernel": rng.standard_normal((16, 16)).astype(np.float32),
        "dense/bias": rng.standard_normal(16).astype(np.float32),
        "step": np.array(n, np.int64),
    }
    if rng.random() < 0.1:
        model["big"] = rng.standard_normal(int(rng.integers(64, 512)) * 1024).astype(np.float32)
    return model


def expected_id(seed: int, n: int) -> str:
    from mvc_magics.core.hashing import dtype_name, tensor_hash, version_id

    model = model_for(seed, n)
    return version_id(None, ((k, dtype_name(a.dtype), a.shape, tensor_hash(a)) for k, a in model.items()))


# -- the child ------------------------------------------------------------------------------------


def child(store: str, seed: int) -> None:
    from mvc_magics import Repo

    rng = random.Random(seed)
    repo = Repo(store)
    print("READY", flush=True)
    n = 0
    committed: list[int] = []
    while True:
        roll = rng.random()
        if roll < 0.7 or not committed:
            n += 1
            tags = [f"s{seed}n{n}"] if rng.random() < 0.5 else []
            print(f"BEGIN {seed} {n} {','.join(tags)}", flush=True)
            version = repo.commit(model_for(seed, n), MODEL, message=f"{seed}/{n}", tags=tags,
                                  metrics={"loss": rng.random()})
            committed.append(n)
            print(f"COMMITTED {version.id} {seed} {n}", flush=True)
        elif roll < 0.8:
            repo.tag("latest", "moving", name=MODEL, force=True)
            print("TAGGED", flush=True)
        elif roll < 0.9:
            old = rng.choice(committed)
            repo.commit(model_for(seed, old), MODEL, metrics={"again": float(old)})
            print(f"RECOMMITTED {seed} {old}", flush=True)
        else:
            old = rng.choice(committed)
            target = model_for(seed, old)
            repo.checkout(expected_id(seed, old), target, name=MODEL)
            print(f"CHECKEDOUT {seed} {old}", flush=True)


def hold_lock(store: str) -> None:
    """Hold the store lock until a line arrives on stdin, then commit inside it (for lock tests)."""
    from mvc_magics import Repo

    repo = Repo(store)
    with repo.layout.locked():
        print(f"HOLDING {os.getpid()}", flush=True)
        sys.stdin.readline()
        version = repo.commit(model_for(999, 1), "holder")  # the lock is re-entrant for its holder
        print(f"DONE {version.id}", flush=True)


# -- the parent -----------------------------------------------------------------------------------


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


class ChildProcess:
    """A child of this script with its stdout lines collected by a thread."""

    def __init__(self, *args: str, script: Path | None = None) -> None:
        script = script or Path(__file__).resolve()
        self.proc = subprocess.Popen([sys.executable, str(script), *args], env=child_env(),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.lines: list[str] = []
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if line.startswith(("READY", "HOLDING")):
                self._ready.set()
        self._ready.set()

    def wait_ready(self, timeout: float = 60.0) -> None:
        if not self._ready.wait(timeout) or self.proc.poll() is not None:
            raise SoakFailure(f"child did not start: {self.proc.stderr.read() if self.proc.poll() is not None else ''}")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self._reader.join(10)
        if self.proc.returncode != -signal.SIGKILL:
            raise SoakFailure(f"child exited by itself ({self.proc.returncode}): {self.proc.stderr.read()[-2000:]}")
        self.proc.stderr.close()
        self.proc.stdin.close()


def _openers(path: Path) -> list[str]:
    """The processes that have ``path`` open (pid, name and command line), read from /proc."""
    found = []
    target = os.stat(path)
    for pid in filter(str.isdigit, os.listdir("/proc")) if os.path.isdir("/proc") else []:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                info = os.stat(f"/proc/{pid}/fd/{fd}")
                if (info.st_dev, info.st_ino) == (target.st_dev, target.st_ino):
                    command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:200]
                    found.append(f"{pid} {command.decode(errors='replace')}")
                    break
        except OSError:
            continue
    return found


def lock_busy(store: Path) -> bool:
    """True when some process holds the store's flock right now (tried without waiting)."""
    import fcntl

    try:
        fd = os.open(store / "lock", os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # releases it if taken here


def lock_report(store: Path) -> str:
    """What a failed lock check found: lock.owner's text and who holds the flock (pid in /proc/locks,
    and the processes that have the lock file open)."""
    owner = store / "lock.owner"
    text = owner.read_text(errors="replace").strip() if owner.exists() else None
    held = "free"
    if lock_busy(store):
        inode = os.stat(store / "lock").st_ino
        locks = Path("/proc/locks").read_text().splitlines() if Path("/proc/locks").exists() else []
        held = f"held by {[line.split()[4] for line in locks if f':{inode} ' in line] or 'another process'}, " \
               f"open in {_openers(store / 'lock')}"
    return f"lock.owner {text!r} (this process {os.getpid()}), flock {held}"


def check_store(store: Path, committed: dict[str, tuple[int, int]], in_flight: tuple | None,
                recheck: list[str], stats: dict) -> None:
    """Every promise after a kill (raises SoakFailure)."""
    from mvc_magics import Repo

    with Repo(store) as repo:
        stray = [p.name for p in (store / "tmp").iterdir()] if (store / "tmp").is_dir() else []
        if stray or (store / "lock.owner").exists():
            raise SoakFailure(f"stale lock or stray temporaries after opening the store: {lock_report(store)}; "
                              f"temporaries {stray}")
        report = repo.verify()
        if not report.ok:
            raise SoakFailure(f"verify after kill:\n{report}")
        stats["torn_audit_lines"] = max(stats.get("torn_audit_lines", 0),
                                        sum("torn write" in n for n in report.notes))
        present = set(repo.index.version_ids())
        for vid in recheck:
            if vid not in present:
                raise SoakFailure(f"reported version {vid[:12]} is missing after the kill")
            seed, n = committed[vid]
            state = repo.load_state(vid)
            model = model_for(seed, n)
            if set(state) != set(model) or any(not np.array_equal(state[k], model[k]) or
                                               state[k].dtype != model[k].dtype for k in model):
                raise SoakFailure(f"version {vid[:12]} is not bit-identical after the kill")
        if in_flight is None:
            stats["kills_between_commits"] += 1
            return
        seed, n, tags = in_flight
        vid = expected_id(seed, n)
        if vid in committed:  # the same content was committed before: nothing new was in flight
            stats["kills_between_commits"] += 1
            return
        snapshot = repo.layout.snapshot_path(vid)
        if vid not in present:
            if snapshot.exists():
                raise SoakFailure(f"interrupted commit {vid[:12]}: snapshot on disk but not indexed")
            stats["interrupted_absent"] += 1
            return
        state = repo.load_state(vid)
        model = model_for(seed, n)
        if any(not np.array_equal(state[k], model[k]) for k in model):
            raise SoakFailure(f"interrupted commit {vid[:12]} is present but not bit-identical")
        version = repo.get(vid)
        missing = [t for t in tags if t not in version.tags]
        if missing:
            raise SoakFailure(f"interrupted commit {vid[:12]} is present without its tags {missing}")
        head = repo.head(MODEL)
        if head is None or head.id != vid:
            raise SoakFailure(f"interrupted commit {vid[:12]} is present but HEAD is {head and head.short_id}")
        if not any(vid in e.ids for e in repo.audit.entries()):
            raise SoakFailure(f"interrupted commit {vid[:12]} has no audit entry")
        committed[vid] = (seed, n)
        stats["interrupted_complete"] += 1


def run_soak(kills: int, store: Path, seed: int = 0, max_delay: float = 0.3, full_check_every: int = 25,
             log=None) -> dict:
    """Kill ``kills`` children and check the store after each; return the figures."""
    rng = random.Random(seed)
    store = Path(store)
    committed: dict[str, tuple[int, int]] = {}
    stats = {"kills": 0, "versions_reported": 0, "interrupted_absent": 0, "interrupted_complete": 0,
             "kills_between_commits": 0, "recoveries": 0, "lock_held_after_kill": 0}
    started = time.time()
    for k in range(kills):
        child_seed = rng.randrange(1, 2**31)
        proc = ChildProcess("--child", str(store), str(child_seed))
        proc.wait_ready()
        time.sleep(rng.uniform(0.0, max_delay))
        proc.kill()
        stats["kills"] += 1
        # A kill while the child was starting git: its fork holds the dead child's lock for a moment
        # (the store's opening waits for it: StoreLayout.recover_if_stale).
        stats["lock_held_after_kill"] += lock_busy(store)
        in_flight, new = None, []
        for line in proc.lines:
            parts = line.split(" ")
            if parts[0] == "BEGIN":
                in_flight = (int(parts[1]), int(parts[2]), [t for t in parts[3].split(",") if t])
            elif parts[0] == "COMMITTED":
                committed[parts[1]] = (int(parts[2]), int(parts[3]))
                new.append(parts[1])
                in_flight = None
        stats["versions_reported"] += len(new)
        full = (k + 1) % full_check_every == 0 or k == kills - 1
        check_store(store, committed, in_flight, list(committed) if full else new, stats)
        if log:
            log(f"kill {k + 1}/{kills}: {len(new)} reported, {len(committed)} versions, "
                f"in flight: {'yes' if in_flight else 'no'}")
    from mvc_magics import Repo

    with Repo(store) as repo:
        stats["recoveries"] = sum(e.op == "recover" for e in repo.audit.entries())
        stats["versions_in_store"] = repo.index.count()
        stats["audit_entries"] = sum(1 for _ in repo.audit.entries())
    stats["store_bytes"] = sum(p.stat().st_size for p in store.rglob("*") if p.is_file())
    stats["seconds"] = round(time.time() - started, 1)
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--store", default=None, help="store folder (default: a new temporary folder)")
    parser.add_argument("--max-delay", type=float, default=0.3, help="longest wait before a kill (s)")
    parser.add_argument("--child", nargs=2, metavar=("STORE", "SEED"), help=argparse.SUPPRESS)
    parser.add_argument("--hold-lock", metavar="STORE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]))
        return
    if args.hold_lock:
        hold_lock(args.hold_lock)
        return
    import tempfile

    store = Path(args.store) if args.store else Path(tempfile.mkdtemp(prefix="mvc-crash-soak-")) / ".mvc"
    stats = run_soak(args.kills, store, seed=args.seed, max_delay=args.max_delay,
                     log=lambda text: print(text, file=sys.stderr, flush=True))
    print(json.dumps(stats, indent=2))


if __name__ == "__main__":
    main()
