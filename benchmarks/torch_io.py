"""PyTorch: mvc_magics commit/checkout against torch.save/torch.load and safetensors, in one run.

``python benchmarks/torch_io.py [MEGABYTES] [--repeat N]`` (default 100 MB, 5 repeats; medians).

The model is an MLP of float32 Linear layers plus a BatchNorm (buffers, num_batches_tracked).
Each first commit goes into a fresh store (nothing to deduplicate); the unchanged re-commit is a
second commit of the same weights; checkout loads a version into the live module in place (every
tensor re-hashed, every shape checked first). Peers write to and read from the same folder
(``torch.save(model.state_dict())``, ``safetensors.torch.save_file``; ``torch.load`` +
``load_state_dict``, ``load_file`` + ``load_state_dict``). Peers do not fsync; mvc_magics does
(a version is durable when commit returns), so the ratios include that cost on our side.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGETS = {"first commit / torch.save": 0.75, "unchanged re-commit / torch.save": 0.1,
           "checkout / torch.load+load_state_dict": 0.8}


def make_model(megabytes: float):
    import torch

    torch.manual_seed(0)
    width = 2048
    layers = max(1, round(megabytes * 1e6 / (width * width * 4)))
    blocks = [torch.nn.BatchNorm1d(width)]
    for _ in range(layers):
        blocks += [torch.nn.Linear(width, width), torch.nn.ReLU()]
    model = torch.nn.Sequential(*blocks)
    model(torch.randn(8, width))  # BatchNorm statistics move
    return model


def timed(fn, repeat: int, setup=None) -> float:
    times = []
    for _ in range(repeat):
        if setup is not None:
            setup()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(megabytes: float = 100.0, repeat: int = 5) -> dict:
    import torch
    from safetensors.torch import load_file, save_file

    from mvc_magics import Repo

    model = make_model(megabytes)
    nbytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    folder = Path(tempfile.mkdtemp(prefix="mvc-torch-bench-"))
    pt, st = folder / "model.pt", folder / "model.safetensors"
    stores = iter(range(10_000))
    try:
        results = {
            "torch.save": timed(lambda: torch.save(model.state_dict(), pt), repeat),
            "safetensors save_file": timed(lambda: save_file(model.state_dict(), str(st)), repeat),
        }
        repos: list[Repo] = []

        def fresh() -> None:
            for old in repos:
                old.close()
            repos[:] = [Repo(folder / f"store{next(stores)}")]

        results["first commit"] = timed(lambda: repos[0].commit(model, "net"), repeat, setup=fresh)
        repo = repos[0]
        results["unchanged re-commit"] = timed(lambda: repo.commit(model, "net"), repeat)
        version = repo.log("net")[0]
        results["torch.load+load_state_dict"] = timed(
            lambda: model.load_state_dict(torch.load(pt, weights_only=True)), repeat)
        results["safetensors load_file+load_state_dict"] = timed(
            lambda: model.load_state_dict(load_file(str(st))), repeat)
        results["checkout"] = timed(lambda: repo.checkout(version.id, model), repeat)
        results["status"] = timed(lambda: repo.is_modified(model, version), repeat)
        repo.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    ratios = {
        "first commit / torch.save": results["first commit"] / results["torch.save"],
        "first commit / safetensors save_file": results["first commit"] / results["safetensors save_file"],
        "unchanged re-commit / torch.save": results["unchanged re-commit"] / results["torch.save"],
        "checkout / torch.load+load_state_dict": results["checkout"] / results["torch.load+load_state_dict"],
        "checkout / safetensors load_file+load_state_dict":
            results["checkout"] / results["safetensors load_file+load_state_dict"],
    }
    return {"megabytes": nbytes / 1e6, "repeat": repeat, "seconds": results, "ratios": ratios}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("megabytes", nargs="?", type=float, default=100.0)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    report = run(args.megabytes, args.repeat)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"PyTorch model: {report['megabytes']:.1f} MB, median of {report['repeat']}")
    for name, seconds in report["seconds"].items():
        print(f"  {name:<40} {seconds * 1000:9.1f} ms")
    for name, ratio in report["ratios"].items():
        target = TARGETS.get(name)
        verdict = "" if target is None else f"  (target <= {target}x: {'met' if ratio <= target else 'MISSED'})"
        print(f"  {name:<48} {ratio:6.3f}x{verdict}")


if __name__ == "__main__":
    main()
