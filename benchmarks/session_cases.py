"""The cases about a session: history queries over many versions, loading the extension, status."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mvc_magics import Repo

from .harness import REPO_ROOT, CaseResult, Workspace
from .measure import timed
from .models import BenchModel

# -- history: log, compare and refs over many versions ----------------------------------------


# compare builds n x n matrices in Python: beyond this many versions one call takes minutes.
COMPARE_CAP = 1000


def build_history(path: Path, n_versions: int) -> str:
    """A store with ``n_versions`` real commits of a small dict model with metrics."""
    rng = np.random.default_rng(0)
    model = {"dense/kernel": rng.standard_normal((16, 8)).astype(np.float32),
             "dense/bias": np.zeros(8, np.float32), "head/kernel": rng.standard_normal((8, 2)).astype(np.float32)}
    with Repo(path) as repo:
        for i in range(n_versions):
            model["head/kernel"] = model["head/kernel"] + np.float32(0.001)
            repo.commit(model, "model", message=f"epoch {i}",
                        metrics={"val_loss": float(rng.uniform(0.1, 1.0)), "accuracy": float(rng.uniform(0.5, 1.0))},
                        tags=["baseline"] if i == 0 else ())
    return "model"


def history(ws: Workspace, n_versions: int, reps: int, tmpfs: str | None) -> list[CaseResult]:
    """log / compare / best: over ``n_versions`` versions (absolute times: there is no peer)."""
    root = Path(tempfile.mkdtemp(prefix="mvc-history-", dir=tmpfs)) if tmpfs else ws.fresh("history")
    try:
        seconds, name = timed(lambda: build_history(root / ".mvc", n_versions))
        results = []
        with Repo(root / ".mvc") as repo:
            cold = CaseResult(f"log, all {n_versions} versions, first call", f"{n_versions} versions", 0)
            for _ in range(reps):
                with Repo(root / ".mvc") as fresh:  # a new session: nothing parsed yet
                    cold.ours.add(timed(lambda: fresh.log(name))[0])
            cold.check(cold.ours.median, 0.3, "< 300 ms", "seconds")
            results.append(cold)
            ops: dict[str, tuple[Callable[[], object], float]] = {
                f"log, all {n_versions} versions, repeated": (lambda: repo.log(name), 0.3),
                "log -n 20": (lambda: repo.log(name, limit=20), 0.3),
                "resolve best:val_loss": (lambda: repo.resolve("best:val_loss", name), 0.05),
                "log rendered as text (-n 20)": (lambda: str(repo.log(name, limit=20)), 0.3),
            }
            compare = getattr(repo, "compare", None)
            capped = min(n_versions, COMPARE_CAP)
            if compare is not None:
                ops["compare, 20 newest (the default)"] = (lambda: repo.compare(name=name), 0.3)
                ops[f"compare, {capped} newest"] = (lambda: repo.compare(name=name, limit=capped), 0.3)
            for label, (func, limit) in ops.items():
                result = CaseResult(label, f"{n_versions} versions", 0)
                for _ in range(reps if not label.startswith(f"compare, {capped}") else 1):
                    result.ours.add(timed(func)[0])
                result.check(result.ours.median, limit, f"< {limit * 1000:.0f} ms", "seconds")
                if label.startswith(f"compare, {capped}") and capped < n_versions:
                    estimate = result.ours.median * (n_versions / capped) ** 2
                    result.figures[f"estimate for {n_versions} (quadratic)"] = f"{estimate:.0f} s"
                    result.note = (f"capped at {capped} versions: Comparison builds two n x n pairwise D "
                                   "matrices in Python (issue 3), so time grows with n squared")
                results.append(result)
            if compare is None:
                missing = CaseResult("compare", f"{n_versions} versions", 0)
                missing.note = "not available: Repo.compare (issue 3) is not on main yet"
                missing.target = "< 300 ms"
                results.append(missing)
        opened = CaseResult("open the store (Repo(path))", f"{n_versions} versions", 0)
        for _ in range(reps):
            opened.ours.add(timed(lambda: Repo(root / ".mvc").close())[0])
        opened.note = "informational: a session opens the store once"
        results.append(opened)
        results[0].figures["seconds to build the history"] = seconds
        results[0].figures["history on tmpfs"] = bool(tmpfs)
        return results
    finally:
        shutil.rmtree(root, ignore_errors=True)


# -- the extension and status -----------------------------------------------------------------

_LOAD_EXT = """
import json, sys, time
from IPython.core.interactiveshell import InteractiveShell
shell = InteractiveShell.instance()
shell.history_manager.enabled = False
start = time.perf_counter()
shell.run_line_magic("load_ext", "mvc_magics")
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "tensorflow": "tensorflow" in sys.modules, "keras": "keras" in sys.modules}))
"""


def load_ext(reps: int) -> CaseResult:
    """``%load_ext mvc_magics`` in a fresh IPython process each time (IPython itself not timed)."""
    result = CaseResult("%load_ext mvc_magics", "-", 0)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    imported = []
    for _ in range(reps):
        out = subprocess.run([sys.executable, "-c", _LOAD_EXT], capture_output=True, text=True, env=env,
                             check=True, timeout=300)
        data = json.loads(out.stdout.strip().splitlines()[-1])
        result.ours.add(data["seconds"])
        imported.append(data["tensorflow"] or data["keras"])
    result.figures["tensorflow or keras imported"] = any(imported)
    result.check(result.ours.median, 0.5, "well under 1 s (< 0.5 s), TensorFlow not imported", "seconds")
    if any(imported):
        result.met = False
    return result


def status(bm: BenchModel, ws: Workspace, reps: int) -> CaseResult:
    """``%mvc_status`` through a real IPython shell on an unchanged model."""
    from IPython.core.interactiveshell import InteractiveShell

    result = CaseResult("%mvc_status, unchanged", bm.key, bm.nbytes)
    shell = InteractiveShell.instance()
    shell.history_manager.enabled = False
    shell.run_line_magic("load_ext", "mvc_magics")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the magics' one-line confirmations
            shell.run_line_magic("mvc_init", str(ws.fresh("status") / ".mvc"))
            shell.user_ns["model"] = bm.model
            shell.run_line_magic("mvc_commit", "model")
        for _ in range(reps):
            seconds, report = timed(lambda: shell.run_line_magic("mvc_status", ""))
            if report[0].changed:
                raise AssertionError("status reported an unchanged model as modified")
            result.ours.add(seconds)
        bm.change_last_layer(seed=7000)
        if not shell.run_line_magic("mvc_status", "")[0].changed:
            raise AssertionError("status missed a change")
    finally:
        shell.run_line_magic("unload_ext", "mvc_magics")
        shell.user_ns.pop("model", None)
    result.check(result.ours.median, 0.1, "< 100 ms", "seconds")
    return result
