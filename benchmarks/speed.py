"""Issue 24's targets in one run: commit and checkout against the save/load call a user would make.

    python -m benchmarks.speed                    # every case, 5 alternating repetitions
    python -m benchmarks.speed --only torch,loop  # some cases (torch, keras31, keras109, resnet50, loop, epochs)
    python -m benchmarks.speed --smoke            # small models, 1 repetition (a test runs this)

Every repetition runs ours and each peer back to back, alternating which goes first, after an
untimed ``os.sync()``; the ratio is taken within the repetition and the table shows the median of
those ratios (``benchmarks.harness.side_by_side``). Peers that save get an fsync of their file
(a commit is durable when it returns), except in the loop case, where the peer is the plain
``torch.save`` a training loop calls. Results go to ``benchmarks/speed_results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from .harness import REPO_ROOT, CaseResult, Workspace, settle, side_by_side
from .measure import dir_bytes

CASES = ("torch", "keras31", "keras109", "resnet50", "loop", "epochs")


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
    pt, st = folder / "peer.pt", folder / "peer.safetensors"

    def torch_save() -> None:
        torch.save(model.state_dict(), pt)
        _fsynced(pt)

    def st_save() -> None:
        save_file(model.state_dict(), str(st))
        _fsynced(st)

    commit = CaseResult("first commit", f"torch_mlp_{megabytes:g}mb", nbytes)
    repos: list[Repo] = []

    def fresh(rep: int) -> None:
        for old in repos:
            old.close()
        repos[:] = [Repo(ws.fresh(f"torch-store-{rep}") / ".mvc")]

    side_by_side(commit, reps, lambda: repos[0].commit(model, "net"),
                 {"torch.save+fsync": torch_save, "safetensors save_file+fsync": st_save}, setup=fresh)
    repo = repos[0]
    vid = repo.log("net")[0].id
    checkout = CaseResult("checkout into the live model", commit.model, nbytes)
    side_by_side(checkout, reps, lambda: repo.checkout(vid, model),
                 {"torch.load+load_state_dict": lambda: model.load_state_dict(torch.load(pt, weights_only=True)),
                  "safetensors load_file+load_state_dict": lambda: model.load_state_dict(load_file(str(st)))})
    repo.close()
    return [commit, checkout]


def keras_cases(ws: Workspace, reps: int, bm) -> list[CaseResult]:
    """First commit and checkout of a Keras model against safetensors (save+fsync, load+assign)."""
    from mvc_magics import Repo

    from . import peers

    folder = ws.fresh(f"keras-{bm.key}")

    def st_save() -> None:
        _fsynced(peers.safetensors_save(bm, folder))

    commit = CaseResult("first commit", bm.key, bm.nbytes)
    repos: list[Repo] = []

    def fresh(rep: int) -> None:
        for old in repos:
            old.close()
        repos[:] = [Repo(ws.fresh(f"{bm.key}-store-{rep}") / ".mvc")]

    side_by_side(commit, reps, lambda: repos[0].commit(bm.model, "m"), {"safetensors save+fsync": st_save},
                 setup=fresh)
    repo = repos[0]
    vid = repo.log("m")[0].id
    checkout = CaseResult("checkout into the live model", bm.key, bm.nbytes)
    side_by_side(checkout, reps, lambda: repo.checkout(vid, bm.model),
                 {"safetensors load+assign": lambda: peers.safetensors_load(bm, folder)})
    repo.close()
    return [commit, checkout]


def loop_case(ws: Workspace, reps: int, megabytes: float, steps: int = 5) -> CaseResult:
    """A plain PyTorch loop committing every step (``commit_every(n_steps=1)``): the time the loop
    is blocked in ``step()`` per commit, against the ``torch.save`` (no fsync) such a loop calls.

    Each step first computes for ~0.3 s (matrix products, on the CPU the background commit also
    needs), as training does between checkpoints; only the commit / save calls are timed. The time
    the end of the ``with`` block waits for the last commits is reported apart ("drain")."""
    import torch

    from mvc_magics import Repo, commit_every

    from .measure import Samples
    from .torch_io import make_model

    model = make_model(megabytes)
    params = list(model.parameters())
    nbytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    result = CaseResult(f"commit_every(1): blocked per commit ({steps} steps)", f"torch_mlp_{megabytes:g}mb", nbytes)
    pt = ws.fresh("loop") / "step.pt"
    work = torch.randn(768, 768)

    def train_step() -> None:  # untimed: compute, then the weights move as an optimizer step moves them
        deadline = time.perf_counter() + 0.3
        while time.perf_counter() < deadline:
            torch.mm(work, work)
        with torch.no_grad():
            for p in params:
                p.mul_(1.0001)

    def ours(rep: int) -> tuple[float, float]:
        blocked = 0.0
        with Repo(ws.fresh(f"loop-store-{rep}") / ".mvc") as repo:
            run = commit_every(model, 1, "net", repo=repo)
            for _ in range(steps):
                train_step()
                start = time.perf_counter()
                run.step()
                blocked += time.perf_counter() - start
            start = time.perf_counter()
            run.__exit__(None, None, None)  # waits for the commits still being written
            return blocked, time.perf_counter() - start

    def peer() -> float:
        blocked = 0.0
        for _ in range(steps):
            train_step()
            start = time.perf_counter()
            torch.save(model.state_dict(), pt)
            blocked += time.perf_counter() - start
        return blocked

    drains = Samples()
    for rep in range(reps):
        settle()
        if rep % 2:
            theirs = peer()
            settle()
            mine, drain = ours(rep)
        else:
            mine, drain = ours(rep)
            settle()
            theirs = peer()
        result.ours.add(mine / steps)
        result.peers.setdefault("torch.save (no fsync)", Samples()).add(theirs / steps)
        result.ratios.setdefault("torch.save (no fsync)", Samples()).add(mine / theirs)
        drains.add(drain)
    result.figures["drain at the end of the block, median s"] = drains.median
    result.check(result.ratios["torch.save (no fsync)"].median, 0.25, "<= 0.25", "blocked / torch.save")
    return result


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
                     {"safetensors load+assign": lambda: peers.safetensors_load(bm, folder)})
    return [disk, oldest]


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
            results.append(loop_case(ws, reps, 2.0 if args.smoke else 100.0))
        if "epochs" in only:
            bm = models.dense_stack(64, 2, 10, "dense_small", "Dense 2x64") if args.smoke else models.dense_100mb()
            results += epochs_case(ws, bm, 3 if args.smoke else 10)
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
