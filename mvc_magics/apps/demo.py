"""The quickstart end to end, headless: ``python -m mvc_magics.demo [FOLDER]``.

Executes ``notebooks/01-quickstart.ipynb`` with a real Jupyter kernel (nbclient) in FOLDER (default
``demo-output``): it trains the reference linear regression (y = 2x), commits it after 10, 50 and
100 epochs with the validation MSE, checks out ``best:val_mse``, compares, merges and deploys. Then
it prints where the executed notebook and its figures went and checks, in the notebook's own store,
that ``best:val_mse`` is the 100-epoch version. Needs the ``notebooks`` extra.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..api import Repo
from .notebook_runner import run_notebook

NOTEBOOK = "01-quickstart.ipynb"
STORE = ".mvc-quickstart"  # the store the quickstart opens with %mvc_init, beside the notebook


def find_notebook(name: str = NOTEBOOK) -> Path:
    """``notebooks/<name>`` of the checkout this package is imported from, else of the cwd."""
    here = Path(__file__).resolve().parents[2] / "notebooks" / name
    if here.is_file():
        return here
    there = Path.cwd() / "notebooks" / name
    if there.is_file():
        return there
    raise FileNotFoundError(f"notebooks/{name} not found: run this from a clone of the repository")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    folder = Path(args[0] if args else "demo-output").resolve()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from nbclient.exceptions import CellExecutionError

    source = find_notebook()
    print(f"running {source} with a Jupyter kernel in {folder} ...", flush=True)
    try:
        run = run_notebook(source, folder)
    except CellExecutionError as exc:
        print(f"demo failed: a cell raised (executed notebook: {folder / source.name})\n{exc}", file=sys.stderr)
        return 1
    print(f"executed notebook: {run.executed}  ({run.seconds:.0f}s)")
    for figure in run.figures:
        print(f"figure: {figure}")
    exported = folder / "quickstart-model.keras"
    if exported.exists():
        print(f"exported model (production): {exported}")
    with Repo(folder / STORE, create=False) as repo:
        best = repo.resolve("best:val_mse", name="model")
        count = len(repo.log("model"))
    if best.message != "100 epochs":
        print(f"demo check failed: best:val_mse is {best.summary()}, not the 100-epoch version", file=sys.stderr)
        return 1
    print(f"store: {folder / STORE} ({count} versions of model)")
    print(f"OK: best:val_mse is the 100-epoch version {best.summary()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
