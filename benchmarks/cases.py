"""The benchmark cases. Each returns a :class:`CaseResult` with ratios measured back to back."""

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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mvc_magics import Repo

from . import peers
from .measure import Samples, dir_bytes, peak_rss_growth, quiet_gc, timed, timed_cpu
from .models import BenchModel

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class CaseResult:
    """One case on one model: our times, the peers' times, per-repetition ratios, target."""

    case: str
    model: str
    model_bytes: int
    ours: Samples = field(default_factory=Samples)
    peers: dict[str, Samples] = field(default_factory=dict)
    ratios: dict[str, Samples] = field(default_factory=dict)
    cpu_ratios: dict[str, Samples] = field(default_factory=dict)
    figures: dict[str, float | int | str | None] = field(default_factory=dict)
    target: str = ""
    headline: str = ""  # the ratio or figure the target is about
    limit: float | None = None
    met: bool | None = None
    note: str = ""

    def check(self, value: float | None, limit: float, target: str, headline: str) -> None:
        self.target, self.headline, self.limit = target, headline, limit
        self.met = None if value is None or value != value else bool(value <= limit)

    def to_json(self) -> dict:
        return {
            "case": self.case, "model": self.model, "model_bytes": self.model_bytes,
            "ours_seconds": self.ours.to_json(),
            "peers_seconds": {k: v.to_json() for k, v in self.peers.items()},
            "ratios": {k: v.to_json() for k, v in self.ratios.items()},
            "cpu_ratios": {k: v.to_json() for k, v in self.cpu_ratios.items()},
            "figures": self.figures, "target": self.target, "headline": self.headline,
            "limit": self.limit, "met": self.met, "note": self.note,
        }


def side_by_side(result: CaseResult, reps: int, ours: Callable[[], object],
                 others: dict[str, Callable[[], object] | None], setup: Callable[[int], None] | None = None,
                 after: Callable[[object], None] | None = None) -> None:
    """Run ``ours`` and each peer back to back, ``reps`` times, alternating which goes first.

    A ratio is taken within each repetition (ours / peer), so load from other processes that
    lasts longer than one repetition cancels out.
    """
    others = {k: v for k, v in others.items() if v is not None}
    for rep in range(reps):
        if setup is not None:
            setup(rep)
        times: dict[str, float] = {}
        cpu: dict[str, float] = {}
        order = ["ours", *others] if rep % 2 == 0 else [*others, "ours"]
        with quiet_gc():
            for who in order:
                settle()
                times[who], cpu[who], value = timed_cpu(ours if who == "ours" else others[who])
                if who == "ours" and after is not None:
                    after(value)
        result.ours.add(times["ours"])
        for who in others:
            result.peers.setdefault(who, Samples()).add(times[who])
            result.ratios.setdefault(who, Samples()).add(times["ours"] / times[who])
            if cpu[who] > 0:
                result.cpu_ratios.setdefault(who, Samples()).add(cpu["ours"] / cpu[who])


def settle() -> None:
    """Write back every dirty page before the next timed call (untimed).

    Keras and safetensors leave their files dirty in the page cache (no fsync); without this the
    kernel's dirty-page throttling would bill their deferred writeback to whoever writes next.
    """
    if hasattr(os, "sync"):
        os.sync()


class Workspace:
    """Temporary folders for stores and peer files (removed at the end)."""

    def __init__(self, root: str | None = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="mvc-bench-", dir=root))

    def fresh(self, name: str) -> Path:
        path = self.root / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _peer_writes(bm: BenchModel, folder: Path, arrays: list[np.ndarray]) -> dict[str, Callable[[], object] | None]:
    return {
        "save_weights": lambda: peers.keras_save_weights(bm, folder),
        "model.save(.keras)": lambda: peers.keras_save_model(bm, folder),
        "safetensors": (lambda: peers.safetensors_save(bm, folder)) if peers.safetensors_numpy else None,
        "raw write+fsync": lambda: peers.raw_write(arrays, folder),
    }


def first_commit(bm: BenchModel, ws: Workspace, reps: int) -> CaseResult:
    result = CaseResult("first commit", bm.key, bm.nbytes)
    folder = ws.fresh("peers")
    arrays = peers.raw_arrays(bm)
    state: dict[str, Repo] = {}

    def setup(rep: int) -> None:
        if "repo" in state:
            state["repo"].close()
        for leftover in folder.iterdir():
            leftover.unlink()
        state["repo"] = Repo(ws.fresh("first-commit") / ".mvc")

    side_by_side(result, reps, lambda: state["repo"].commit(bm.model, "model"), _peer_writes(bm, folder, arrays), setup)
    state["repo"].close()
    raw = result.ratios["raw write+fsync"]
    result.figures["throughput vs raw write+fsync"] = 1.0 / raw.median
    result.figures["MB/s"] = bm.nbytes / result.ours.median / 1e6
    result.check(result.ratios["save_weights"].median, 0.75, "<= 0.75x save_weights; >= 50% raw write",
                 "save_weights")
    if result.met is not None:
        result.met = result.met and result.figures["throughput vs raw write+fsync"] >= 0.5
    return result


def recommit_unchanged(bm: BenchModel, ws: Workspace, reps: int) -> CaseResult:
    result = CaseResult("re-commit unchanged", bm.key, bm.nbytes)
    folder = ws.fresh("peers")
    with Repo(ws.fresh("recommit") / ".mvc") as repo:
        repo.commit(bm.model, "model")
        side_by_side(result, reps, lambda: repo.commit(bm.model, "model"),
                     {"save_weights": lambda: peers.keras_save_weights(bm, folder)})
    result.check(result.ratios["save_weights"].median, 0.2, "<= 0.2x save_weights", "save_weights")
    return result


def commit_last_layer(bm: BenchModel, ws: Workspace, reps: int) -> CaseResult:
    result = CaseResult("commit, last layer changed", bm.key, bm.nbytes)
    folder = ws.fresh("peers")
    store = ws.fresh("last-layer") / ".mvc"
    growth = Samples()
    written = Samples()
    with Repo(store) as repo:
        repo.commit(bm.model, "model")
        sizes = {"before": 0}

        def setup(rep: int) -> None:
            bm.change_last_layer(seed=1000 + rep)
            sizes["before"] = dir_bytes(repo.path / "objects")

        def after(version: object) -> None:
            growth.add(dir_bytes(repo.path / "objects") - sizes["before"])
            written.add(version.stats.bytes_written)

        side_by_side(result, reps, lambda: repo.commit(bm.model, "model"),
                     {"save_weights": lambda: peers.keras_save_weights(bm, folder)}, setup, after)
    changed = bm.last_layer_nbytes
    result.figures["changed bytes"] = changed
    result.figures["tensor bytes written"] = written.median
    result.figures["snapshot file growth"] = growth.median
    result.figures["growth / changed bytes"] = growth.median / changed
    result.check(result.ratios["save_weights"].median, 0.25, "<= 0.25x save_weights; growth <= changed + 1%",
                 "save_weights")
    if result.met is not None:
        result.met = result.met and growth.median <= changed * 1.01
    return result


def ten_versions(bm: BenchModel, ws: Workspace) -> CaseResult:
    """Disk use of 10 versions that each changed only the last layer (sizes, not times)."""
    result = CaseResult("10 versions, last layer changed", bm.key, bm.nbytes)
    store = ws.fresh("ten") / ".mvc"
    folder = ws.fresh("peers")
    with Repo(store) as repo:
        for i in range(10):
            if i:
                bm.change_last_layer(seed=2000 + i)
            repo.commit(bm.model, "model", message=f"v{i}")
    keras_file = peers.keras_save_weights(bm, folder).stat().st_size
    objects = dir_bytes(store / "objects")
    whole = dir_bytes(store)
    result.figures["store objects bytes"] = objects
    result.figures["whole store bytes (index, log)"] = whole
    result.figures["objects / one full copy"] = objects / bm.nbytes
    result.figures["whole store / one full copy"] = whole / bm.nbytes
    result.figures["10 .weights.h5 / one full copy"] = 10 * keras_file / bm.nbytes
    floor = bm.nbytes + 9 * bm.last_layer_nbytes  # one copy plus the nine changed heads
    result.figures["whole store / (one copy + 9 changed layers)"] = whole / floor
    if floor / bm.nbytes > 1.2:
        result.note = (f"the last layer is {bm.last_layer_nbytes / bm.nbytes:.1%} of the model, so storing "
                       f"each changed byte once already takes {floor / bm.nbytes:.2f}x; 1.2x needs a "
                       "last layer under 2.2% (or delta compression)")
    result.check(whole / bm.nbytes, 1.2, "<= 1.2x one full copy (10 Keras files: 10x)", "whole store / full copy")
    return result


def checkout_existing(bm: BenchModel, ws: Workspace, reps: int) -> CaseResult:
    result = CaseResult("checkout into existing model", bm.key, bm.nbytes)
    folder = ws.fresh("peers")
    arrays = peers.raw_arrays(bm)
    with Repo(ws.fresh("checkout") / ".mvc") as repo:
        target = repo.commit(bm.model, "model")
        peers.keras_save_weights(bm, folder)
        if peers.safetensors_numpy is not None:
            peers.safetensors_save(bm, folder)
        peers.raw_write(arrays, folder, fsync=False)
        bm.change_last_layer(seed=3000)  # the live model differs from the version checked out
        others = {
            "load_weights": lambda: peers.keras_load_weights(bm, folder),
            "safetensors": (lambda: peers.safetensors_load(bm, folder)) if peers.safetensors_numpy else None,
            "raw read": lambda: peers.raw_read(arrays, folder),
        }
        side_by_side(result, reps, lambda: repo.checkout(target.id, bm.model), others)
    result.check(result.ratios["load_weights"].median, 0.8, "<= 0.8x load_weights", "load_weights")
    return result


def merge_average(bm: BenchModel, ws: Workspace, reps: int, n_inputs: int = 5, into: bool = False) -> CaseResult:
    """Average of ``n_inputs`` versions vs reading the inputs once; peak RSS growth vs one model.

    ``into``: load the soup into the live model (``into=``), which also spares rebuilding a model
    from the stored structure to hold it.
    """
    label = f"merge (average) of {n_inputs} versions" + (", into the live model" if into else "")
    result = CaseResult(label, bm.key, bm.nbytes)
    merge = getattr(Repo, "merge", None)
    if merge is None:
        result.note = "not available: Repo.merge (issue 4) is not on main yet"
        result.target = "<= 1.5x reading the inputs once; peak RSS growth <= 2.5x one model"
        return result
    folder = ws.fresh("peers")
    arrays = peers.raw_arrays(bm)
    peers.raw_write(arrays, folder, fsync=False)
    rss = Samples()
    with Repo(ws.fresh("merge") / ".mvc") as repo:
        ids = []
        for i in range(n_inputs):
            rng = np.random.default_rng(4000 + i)
            for variable in bm.model.weights:
                if variable.dtype.startswith("float"):
                    variable.assign(variable.numpy() + rng.standard_normal(1).astype(variable.dtype))
            ids.append(repo.commit(bm.model, "model", message=f"ingredient {i}").id)

        def raw_read_inputs() -> None:
            for _ in range(n_inputs):
                peers.raw_read(arrays, folder)

        def load_inputs() -> None:
            for vid in ids:  # one at a time: what a streaming merge has to read at least
                repo.load_state(vid)

        reps_done = [0]

        def ours() -> object:
            reps_done[0] += 1  # new weights each time, so every repetition commits a new soup
            weights = [1.0] * (n_inputs - 1) + [1.0 + reps_done[0] / 1000]
            live = bm.model if into else None
            growth, _seconds, version = peak_rss_growth(lambda: _call_merge(repo, ids, weights, live))
            if growth is not None:
                rss.add(growth)
            return version

        side_by_side(result, reps, ours, {f"load_state of the {n_inputs} inputs": load_inputs,
                                          f"raw read of the {n_inputs} inputs": raw_read_inputs})
    result.figures["peak RSS growth / model"] = rss.median / bm.nbytes if rss.values else None
    result.note = ("reading the inputs once = Repo.load_state of each (read + verify, as a merge must); "
                   "the merge also commits the soup" + ("" if into else " and rebuilds a model from the "
                                                        "stored structure to hold it"))
    result.check(result.ratios[f"load_state of the {n_inputs} inputs"].median, 1.5,
                 "<= 1.5x reading the inputs once; peak RSS growth <= 2.5x one model", "read inputs once")
    if result.met is not None and rss.values:
        result.met = result.met and rss.median / bm.nbytes <= 2.5
    return result


def _call_merge(repo: Repo, ids: list[str], weights: list[float], into: object = None) -> object:
    """A weighted average of ``ids`` committed as a new version of ``model`` (Repo.merge, issue 4)."""
    return repo.merge(ids, weights=weights, method="average", name="model", message="benchmark soup", into=into)


def large_model(bm: BenchModel, ws: Workspace, reps: int) -> list[CaseResult]:
    """Commit, checkout and merge of the ~1 GB model: time ratios and peak RSS growth."""
    out = []
    folder = ws.fresh("peers")
    commit = CaseResult("large: first commit", bm.key, bm.nbytes)
    rss: dict[str, Samples] = {"ours": Samples(), "save_weights": Samples()}
    for rep in range(reps):
        if rep:
            bm.change_last_layer(seed=5000 + rep)
        with Repo(ws.fresh("large") / ".mvc") as repo:  # a fresh store: a first commit each time
            growth, seconds, version = peak_rss_growth(lambda: repo.commit(bm.model, "model"))
        peer_growth, peer_seconds, _ = peak_rss_growth(lambda: peers.keras_save_weights(bm, folder))
        commit.ours.add(seconds)
        commit.peers.setdefault("save_weights", Samples()).add(peer_seconds)
        commit.ratios.setdefault("save_weights", Samples()).add(seconds / peer_seconds)
        rss["ours"].add(growth or 0)
        rss["save_weights"].add(peer_growth or 0)
    commit.figures["peak RSS growth / model"] = rss["ours"].median / bm.nbytes
    commit.figures["save_weights peak RSS growth / model"] = rss["save_weights"].median / bm.nbytes
    commit.check(commit.figures["peak RSS growth / model"], 2.0, "peak RSS growth < 2x model", "RSS / model")
    out.append(commit)
    with Repo(ws.root / "large" / ".mvc") as repo:
        checkout = CaseResult("large: checkout into existing", bm.key, bm.nbytes)
        rss = {"ours": Samples(), "load_weights": Samples()}
        for rep in range(reps):
            bm.change_last_layer(seed=6000 + rep)
            growth, seconds, _ = peak_rss_growth(lambda: repo.checkout(version.id, bm.model))
            peer_growth, peer_seconds, _ = peak_rss_growth(lambda: peers.keras_load_weights(bm, folder))
            checkout.ours.add(seconds)
            checkout.peers.setdefault("load_weights", Samples()).add(peer_seconds)
            checkout.ratios.setdefault("load_weights", Samples()).add(seconds / peer_seconds)
            rss["ours"].add(growth or 0)
            rss["load_weights"].add(peer_growth or 0)
        checkout.figures["peak RSS growth / model"] = rss["ours"].median / bm.nbytes
        checkout.figures["load_weights peak RSS growth / model"] = rss["load_weights"].median / bm.nbytes
        checkout.check(checkout.figures["peak RSS growth / model"], 2.0, "peak RSS growth < 2x model", "RSS / model")
        out.append(checkout)
    for into in (False, True):
        merged = merge_average(bm, ws, 1, n_inputs=3, into=into)
        merged.case = "large: " + merged.case
        if merged.figures.get("peak RSS growth / model") is not None:
            merged.check(merged.figures["peak RSS growth / model"], 2.0, "peak RSS growth < 2x model",
                         "RSS / model")
        out.append(merged)
    return out


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
