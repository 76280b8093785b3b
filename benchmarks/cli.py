"""``python -m benchmarks [--smoke|--quick|--full] [--out docs/benchmarks.md]``."""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from . import cases, harness, models, session_cases
from .report import environment, write_json, write_markdown

ROOT = Path(__file__).resolve().parent.parent

PROFILES = {
    # reps per timed case, versions in the history case, build the large model
    "smoke": {"reps": 1, "history": 30, "models": ["tiny"], "large": False, "status_model": "tiny"},
    "quick": {"reps": 3, "history": 1000, "models": ["dense_100mb", "resnet50"], "large": False,
              "status_model": "resnet50"},
    "full": {"reps": 5, "history": 10_000, "models": ["dense_100mb", "resnet50"], "large": True,
             "status_model": "resnet50"},
}
BUILDERS = {"tiny": models.tiny, "dense_100mb": models.dense_100mb, "resnet50": models.resnet50,
            "large_1gb": models.large_1gb}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    mode = parser.add_mutually_exclusive_group()
    for name in PROFILES:
        mode.add_argument(f"--{name}", dest="profile", action="store_const", const=name)
    parser.set_defaults(profile="quick")
    parser.add_argument("--out", default=None, help="markdown file to put the table in (default: none)")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results.json"), help="JSON results file")
    parser.add_argument("--reps", type=int, default=None, help="repetitions per case (overrides the profile)")
    parser.add_argument("--history", type=int, default=None, help="versions in the history case")
    parser.add_argument("--tmp", default=None, help="folder for stores and peer files (default: system temp)")
    parser.add_argument("--only", default=None, help="comma-separated case groups: commit,checkout,merge,"
                        "history,load_ext,status,large")
    return parser


def _tmpfs() -> str | None:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def run(profile: str, reps: int, n_history: int, tmp: str | None, only: set[str] | None,
        log=print) -> list[harness.CaseResult]:
    """Run every case of ``profile``; return the results in report order."""
    settings = PROFILES[profile]

    def want(group: str) -> bool:
        return only is None or group in only

    ws = harness.Workspace(tmp)
    results: list[harness.CaseResult] = []

    def guarded(label: str, func, *args):
        """Run one case; a crash becomes a row saying so instead of losing the whole run."""
        try:
            return func(*args)
        except Exception as exc:  # a benchmark run reports failures, it does not stop at them
            failed = harness.CaseResult(label, "-", 0)
            failed.note = f"failed: {type(exc).__name__}: {str(exc)[:200]}"
            log(f"  {label} failed: {exc!r}")
            return failed

    def record(items) -> None:
        for item in items if isinstance(items, list) else [items]:
            log(f"  {item.case} [{item.model}]: ours {item.ours.median * 1000:.1f} ms; "
                + ", ".join(f"{k} {v.median:.2f}x" for k, v in item.ratios.items())
                + (f"; {item.note}" if item.note else ""))
            results.append(item)

    try:
        if want("load_ext"):
            log("load_ext")
            load_reps = reps if profile == "smoke" else max(reps, 3)
            record(guarded("%load_ext mvc_magics", session_cases.load_ext, load_reps))
        built = {}
        for key in settings["models"]:
            log(f"building {key}")
            bm = built[key] = BUILDERS[key]()
            log(f"  {bm.description}: {bm.nbytes / 1e6:.1f} MB")
            if want("commit"):
                record(guarded("first commit", cases.first_commit, bm, ws, reps))
                record(guarded("re-commit unchanged", cases.recommit_unchanged, bm, ws, reps))
                record(guarded("commit, last layer changed", cases.commit_last_layer, bm, ws, reps))
                record(guarded("10 versions, last layer changed", cases.ten_versions, bm, ws))
            if want("checkout"):
                record(guarded("checkout into existing model", cases.checkout_existing, bm, ws, reps))
            if want("merge") and key in ("dense_100mb", "tiny"):
                record(guarded("merge (average)", cases.merge_average, bm, ws, reps))
                record(guarded("merge (average), into", cases.merge_average, bm, ws, reps, 5, True))
        if want("status"):
            key = settings["status_model"]
            bm = built.get(key) or BUILDERS[key]()
            record(guarded("%mvc_status, unchanged", session_cases.status, bm, ws, max(reps, 5)))
        built.clear()
        if want("history"):
            log(f"history: {n_history} versions")
            record(guarded("history", session_cases.history, ws, n_history, max(reps, 3), _tmpfs()))
        if settings["large"] and want("large"):
            log("building large_1gb")
            bm = models.large_1gb()
            log(f"  {bm.description}: {bm.nbytes / 1e6:.1f} MB")
            record(guarded("large model", cases.large_model, bm, ws, min(reps, 3)))
    finally:
        ws.cleanup()
    return results


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = PROFILES[args.profile]
    reps = args.reps or settings["reps"]
    n_history = args.history or settings["history"]
    only = set(args.only.split(",")) if args.only else None
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    t0 = time.perf_counter()
    results = run(args.profile, reps, n_history, args.tmp, only)
    meta = {"command": "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:]),
            "profile": args.profile, "reps": reps, "history_versions": n_history, "started": started,
            "seconds": time.perf_counter() - t0, "environment": environment()}
    write_json(Path(args.json), results, meta)
    print(f"results: {args.json}")
    if args.out:
        write_markdown(Path(args.out), results, meta)
        print(f"table: {args.out}")
    return 0
