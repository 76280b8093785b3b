"""Issue 24's targets in one run: commit and checkout against the save/load call a user would make.

    python -m benchmarks.speed                    # every case, 5 alternating repetitions
    python -m benchmarks.speed --only torch,loop  # some cases (torch, keras31, keras109, resnet50, loop, epochs,
                                                  # merge)
    python -m benchmarks.speed --smoke            # small models, 1 repetition (a test runs this)

Every repetition runs ours and each peer back to back, alternating which goes first, after an
untimed ``os.sync()``; the ratio is taken within the repetition and the table shows the median of
those ratios (``benchmarks.harness.side_by_side``). Peers that save get an fsync of their file
(a commit is durable when it returns), except in the loop case, where the peer is the plain
``torch.save`` a training loop calls. Results go to ``benchmarks/speed_results.json``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import time
from pathlib import Path

from .harness import REPO_ROOT, CaseResult, Workspace, head_moved, settle, side_by_side
from .measure import dir_bytes

CASES = ("torch", "keras31", "keras109", "resnet50", "loop", "epochs", "merge")


def _fsynced(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def torch_cases(ws: Workspace, reps: int, megabytes: float) -> list[CaseResult]:
    """First commit and checkout of a PyTorch MLP against torch.save/load and safetensors."""
    import torch
    from safetensors.torch import load_file, save_file

    from mvc_magics import Repo

    from .torch_io import make_model

    model = make_model(megabytes)
    nbytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    folder = ws.fresh("torch")
    # Each repetition's first commit goes to a new store, so each peer saves to a new file too (a
    # first save): the previous repetition's file is removed in the untimed setup, before the
    # settle's sync. Rewriting one path would bill the peer for truncating its old file (its 100 MB
    # of cached pages and blocks freed inside the timed call: 25-30 ms here) while the commit
    # writes into a fresh folder and pays for no removal.
    files = {"pt": folder / "peer.pt", "st": folder / "peer.safetensors"}

    def torch_save() -> None:
        torch.save(model.state_dict(), files["pt"])
        _fsynced(files["pt"])

    def st_save() -> None:
        save_file(model.state_dict(), str(files["st"]))
        _fsynced(files["st"])

    commit = CaseResult("first commit", f"torch_mlp_{megabytes:g}mb", nbytes)
    repos: list[Repo] = []

    def fresh(rep: int) -> None:
        for old in repos:
            old.close()
        repos[:] = [Repo(ws.fresh(f"torch-store-{rep}") / ".mvc")]
        for key, path in files.items():
            path.unlink(missing_ok=True)
            files[key] = folder / f"peer-{rep}{path.suffix}"

    side_by_side(commit, reps, lambda: repos[0].commit(model, "net"),
                 {"torch.save+fsync": torch_save, "safetensors save_file+fsync": st_save}, setup=fresh)
    repo = repos[0]
    pt, st = files["pt"], files["st"]
    vid = repo.log("net")[0].id
    checkout = CaseResult("checkout into the live model", commit.model, nbytes)
    side_by_side(checkout, reps, lambda: repo.checkout(vid, model),
                 {"torch.load+load_state_dict": lambda: model.load_state_dict(torch.load(pt, weights_only=True)),
                  "safetensors load_file+load_state_dict": lambda: model.load_state_dict(load_file(str(st)))},
                 warmup=True, after=head_moved(repo, checkout))
    repo.close()
    return [commit, checkout]


def keras_cases(ws: Workspace, reps: int, bm) -> list[CaseResult]:
    """First commit and checkout of a Keras model against safetensors (save+fsync, load+assign)."""
    from mvc_magics import Repo

    from . import peers

    folders = [ws.fresh(f"keras-{bm.key}")]

    def st_save() -> None:
        _fsynced(peers.safetensors_save(bm, folders[0]))

    commit = CaseResult("first commit", bm.key, bm.nbytes)
    repos: list[Repo] = []

    def fresh(rep: int) -> None:  # a new store, and a new file for the peer (see torch_cases)
        for old in repos:
            old.close()
        repos[:] = [Repo(ws.fresh(f"{bm.key}-store-{rep}") / ".mvc")]
        shutil.rmtree(folders[0], ignore_errors=True)
        folders[:] = [ws.fresh(f"keras-{bm.key}-{rep}")]

    side_by_side(commit, reps, lambda: repos[0].commit(bm.model, "m"), {"safetensors save+fsync": st_save},
                 setup=fresh)
    repo, folder = repos[0], folders[0]
    vid = repo.log("m")[0].id
    checkout = CaseResult("checkout into the live model", bm.key, bm.nbytes)
    side_by_side(checkout, reps, lambda: repo.checkout(vid, bm.model),
                 {"safetensors load+assign": lambda: peers.safetensors_load(bm, folder)}, warmup=True,
                 after=head_moved(repo, checkout))
    repo.close()
    return [commit, checkout]


def loop_case(ws: Workspace, reps: int, megabytes: float, steps: int = 5, warmup: int = 2) -> list[CaseResult]:
    """A plain PyTorch loop committing every step (``commit_every(n_steps=1)``): the time the loop
    is blocked in ``step()`` per commit, against the ``torch.save`` (no fsync) such a loop calls.

    Each step first computes for ~0.3 s (matrix products, on the CPU the background commit also
    needs), as training does between checkpoints; only the commit / save calls are timed. The
    first ``warmup`` steps of each side are run but not counted: a loop's first hand-offs allocate
    the buffers later ones reuse (their time is reported apart), and the target is the steady
    state of a long loop. Two rows: the loop as it runs (a hand-off waits when two commits are
    still being written: the disk or the CPU is slower than the loop), and the hand-off alone (the
    background drained, untimed, before each step: the copy and nothing queued). The time the end
    of the ``with`` block waits for the last commits is reported apart ("drain")."""
    import torch

    from mvc_magics import Repo, commit_every

    from .measure import Samples
    from .torch_io import make_model

    model = make_model(megabytes)
    params = list(model.parameters())
    nbytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    peer_name = "torch.save (no fsync)"
    loop = CaseResult(f"commit_every(1): blocked per commit, steady state ({steps} steps)",
                      f"torch_mlp_{megabytes:g}mb", nbytes)
    alone = CaseResult("commit_every(1): the hand-off alone (background idle)", loop.model, nbytes)
    pt = ws.fresh("loop") / "step.pt"
    work = torch.randn(768, 768)

    def train_step() -> None:  # untimed: compute, then the weights move as an optimizer step moves them
        deadline = time.perf_counter() + 0.3
        while time.perf_counter() < deadline:
            torch.mm(work, work)
        with torch.no_grad():
            for p in params:
                p.mul_(1.0001)

    def ours(rep: int, drained: bool) -> tuple[float, float, float]:
        """(seconds blocked over the counted steps, the first step's, the drain at the end)."""
        blocked = first = 0.0
        with Repo(ws.fresh(f"loop-store-{rep}-{drained}") / ".mvc") as repo:
            run = commit_every(model, 1, "net", repo=repo)
            for step in range(warmup + steps):
                train_step()
                if drained:
                    repo.store.background.settle()
                start = time.perf_counter()
                run.step()
                took = time.perf_counter() - start
                first = took if step == 0 else first
                blocked += took if step >= warmup else 0.0
            start = time.perf_counter()
            run.__exit__(None, None, None)  # waits for the commits still being written
            return blocked, first, time.perf_counter() - start

    def peer() -> float:
        blocked = 0.0
        for step in range(warmup + steps):
            train_step()
            start = time.perf_counter()
            torch.save(model.state_dict(), pt)
            blocked += time.perf_counter() - start if step >= warmup else 0.0
        return blocked

    drains, firsts = Samples(), Samples()
    for rep in range(reps):
        runs = [("loop", functools.partial(ours, rep, False)), ("alone", functools.partial(ours, rep, True)),
                ("peer", peer)]
        got: dict[str, object] = {}
        for who, run in runs if rep % 2 == 0 else runs[::-1]:
            settle()
            got[who] = run()
        theirs = got["peer"]
        for result, (mine, _first, _drain) in ((loop, got["loop"]), (alone, got["alone"])):
            result.ours.add(mine / steps)
            result.peers.setdefault(peer_name, Samples()).add(theirs / steps)
            result.ratios.setdefault(peer_name, Samples()).add(mine / theirs)
        drains.add(got["loop"][2])
        firsts.add(got["loop"][1])
    loop.figures["drain at the end of the block, median s"] = drains.median
    loop.figures["first hand-off (allocates the copy's buffers), median s"] = firsts.median
    loop.check(loop.ratios[peer_name].median, 0.25, "<= 0.25", "blocked / torch.save")
    return [loop, alone]


def epochs_case(ws: Workspace, megabytes_model, n: int = 10) -> list[CaseResult]:
    """``n`` Adam epoch checkpoints of a Keras Dense model committed as a loop would (the
    automatic pack runs when loose bytes pass its threshold), then: store bytes / ``n`` raw copies,
    and checkout of the oldest version against safetensors load+assign."""
    from mvc_magics import Repo
    from mvc_magics.adapters.keras import KerasAdapter
    from mvc_magics.operations.autopack import loose_summary

    from . import peers
    from .coding import _compile, _train_data

    bm = megabytes_model
    _compile(bm.model)
    x, y = _train_data(bm.model)
    store = ws.fresh(f"epochs-{bm.key}") / ".mvc"
    disk = CaseResult(f"{n} Adam epoch checkpoints, after the automatic pack", bm.key, bm.nbytes)
    oldest = CaseResult(f"oldest of {n} checkpoints: checkout", bm.key, bm.nbytes)
    with Repo(store) as repo:
        ids = []
        for _ in range(n):
            bm.model.fit(x, y, epochs=1, batch_size=16, verbose=0)
            ids.append(repo.commit(bm.model, "m").id)
        waited = time.perf_counter()
        repo.store.background.wait()  # the automatic pack, if it started, finishes in the background
        disk.figures["seconds waited for the background pack"] = time.perf_counter() - waited
        raw = n * sum(a.nbytes for a in KerasAdapter().get_state(bm.model).values())
        disk.figures["store objects / raw copies"] = dir_bytes(store / "objects") / raw
        disk.figures["loose bytes left"] = loose_summary(repo.store)[1]
        disk.check(disk.figures["store objects / raw copies"], 0.65, "<= 0.65", "store objects / raw copies")
        folder = ws.fresh(f"epochs-peer-{bm.key}")
        peers.safetensors_save(bm, folder)
        settle()
        side_by_side(oldest, 5, lambda: repo.checkout(ids[0], bm.model),
                     {"safetensors load+assign": lambda: peers.safetensors_load(bm, folder)},
                     after=head_moved(repo, oldest))
    return [disk, oldest]


def merge_case(ws: Workspace, reps: int, megabytes: float, n: int = 5) -> CaseResult:
    """Weight average of ``n`` versions of a PyTorch MLP (``Repo.merge``: read, averaged, written
    and synced as a new version) against reading the ``n`` inputs' tensors: with the store
    (``Repo.load_state`` of each, read and verified, the least a merge must read) and with
    safetensors ``load_file`` (a copy of each tensor, so its bytes are read; no check). The peak
    RSS growth of a merge (one more merge per repetition, untimed: the measurement's garbage
    collection stays out of the timed call) is reported against the model's size. The inputs stay
    as committed (loose): the automatic pack is off in this case, so it neither codes them nor
    runs (with its own memory and CPU) beside the timed calls."""
    from .measure import Samples
    from .torch_io import make_model

    model = make_model(megabytes)
    nbytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    result = CaseResult(f"merge (average) of {n} versions", f"torch_mlp_{megabytes:g}mb", nbytes)
    folder = ws.fresh("merge")
    files = [folder / f"input{i}.safetensors" for i in range(n)]
    rss = Samples()
    pack = os.environ.get("MVC_PACK_MB")
    os.environ["MVC_PACK_MB"] = "off"
    try:
        _merge_reps(result, reps, model, n, folder, files, rss)
    finally:
        if pack is None:
            os.environ.pop("MVC_PACK_MB", None)
        else:
            os.environ["MVC_PACK_MB"] = pack
    result.figures["peak RSS growth / model"] = rss.median / nbytes if rss.values else None
    result.check(result.ratios[f"load_state of the {n} inputs"].median, 1.3, "<= 1.3; peak RSS growth <= 1.2x model",
                 "merge / reading the inputs")
    if result.met is not None and rss.values:
        result.met = result.met and rss.median / nbytes <= 1.2
    return result


def _merge_reps(result: CaseResult, reps: int, model, n: int, folder: Path, files: list[Path], rss) -> None:
    """The inputs committed and saved, then the timed repetitions of :func:`merge_case`."""
    import torch
    from safetensors.torch import load_file, save_file

    from mvc_magics import Repo

    from .measure import peak_rss_growth

    with Repo(folder / ".mvc") as repo:
        ids = []
        for i, path in enumerate(files):
            with torch.no_grad():  # each input a fine-tune of the last: every float tensor differs
                for p in model.parameters():
                    p.add_(0.01 * (i + 1))
            ids.append(repo.commit(model, "net", message=f"ingredient {i}").id)
            save_file(model.state_dict(), str(path))
        merges = [0]

        def merge() -> object:  # other weights each time: every merge writes a new version
            merges[0] += 1
            weights = [1.0] * (n - 1) + [1.0 + merges[0] / 1000]
            return repo.merge(ids, weights=weights, method="average", name="net", message="benchmark soup")

        def measure_rss(rep: int) -> None:
            growth, _seconds, _version = peak_rss_growth(merge)
            if growth is not None:
                rss.add(growth)

        def store_read() -> None:
            for vid in ids:  # one at a time, each dropped: what a streaming merge has to read at least
                repo.load_state(vid)

        def safetensors_read() -> None:
            for path in files:  # load_file maps the file: a copy of each tensor reads its bytes
                for tensor in load_file(str(path)).values():
                    tensor.clone()

        side_by_side(result, reps, merge, {f"load_state of the {n} inputs": store_read,
                                           f"safetensors load_file+copy of the {n} inputs": safetensors_read},
                     setup=measure_rss)


def _line(result: CaseResult) -> str:
    ratios = "; ".join(f"{peer}: {s.median:.2f}x [{s.low:.2f}-{s.high:.2f}]" for peer, s in result.ratios.items())
    figures = "; ".join(f"{k}: {v:.3g}" if isinstance(v, float) else f"{k}: {v}"
                        for k, v in result.figures.items() if not isinstance(v, list))
    return f"{result.case} | {result.model} | {result.ours.median * 1e3:.1f} ms | {ratios} {figures}".rstrip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.speed", description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(CASES), help=f"comma-separated: {', '.join(CASES)}")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="small models, 1 repetition")
    parser.add_argument("--tmp", default=None)
    parser.add_argument("--json", default=str(REPO_ROOT / "benchmarks" / "speed_results.json"))
    args = parser.parse_args(argv)
    from . import models

    reps = 1 if args.smoke else args.reps
    only = set(args.only.split(","))
    ws = Workspace(args.tmp)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load = os.getloadavg()
    results: list[CaseResult] = []
    try:
        if "torch" in only:
            results += torch_cases(ws, reps, 2.0 if args.smoke else 100.0)
        if "keras31" in only:
            results += keras_cases(ws, reps, models.dense_stack(256 if args.smoke else 1024, 7, 1000, "dense_31mb",
                                                                "Dense 7x1024 + head (31 MB)"))
        if "keras109" in only and not args.smoke:
            results += keras_cases(ws, reps, models.dense_100mb())
        if "resnet50" in only and not args.smoke:
            results += keras_cases(ws, reps, models.resnet50())
        if "loop" in only:
            results += loop_case(ws, reps, 2.0 if args.smoke else 100.0, 2 if args.smoke else 5,
                                 1 if args.smoke else 2)
        if "epochs" in only:
            bm = models.dense_stack(64, 2, 10, "dense_small", "Dense 2x64") if args.smoke else models.dense_100mb()
            results += epochs_case(ws, bm, 3 if args.smoke else 10)
        if "merge" in only:
            results.append(merge_case(ws, reps, 2.0 if args.smoke else 100.0))
    finally:
        ws.cleanup()
    ended = time.strftime("%H:%M UTC", time.gmtime())
    header = (f"run {started}-{ended}, loadavg at start {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}, "
              f"at end {'/'.join(f'{v:.2f}' for v in os.getloadavg())}, {reps} repetitions")
    print(header)
    for result in results:
        print(_line(result))
    Path(args.json).write_text(json.dumps({"run": header, "results": [r.to_json() for r in results]}, indent=1,
                                          default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
