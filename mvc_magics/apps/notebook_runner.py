"""Run a notebook headless with a real Jupyter kernel and keep what it produced.

Used by ``python -m mvc_magics.demo``, the notebook tests and the Binder check. Needs the
``notebooks`` extra (nbclient, nbformat, ipykernel); nothing here is imported by the package itself.

>>> run = run_notebook("notebooks/01-quickstart.ipynb", "demo-output")  # doctest: +SKIP
>>> run.executed, run.figures  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

# What the kernel process itself printed (not cell outputs), kept in the output folder.
KERNEL_LOG = "kernel.log"


@dataclass
class NotebookRun:
    """Where an executed notebook and its figures went, and how long it took."""

    source: Path
    executed: Path
    figures: list[Path] = field(default_factory=list)
    seconds: float = 0.0


def kernel_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The kernel's environment: this process's, importing the same ``mvc_magics`` tree.

    ``PYTHONPATH`` starts with the folder that holds the imported package, so a kernel started from
    a checkout tests that checkout (not whatever is installed). ``MVC_DIR`` is dropped so each
    notebook uses its own store, and ``MPLBACKEND`` so figures render inline.
    """
    env = dict(os.environ)
    tree = str(Path(__file__).resolve().parents[2])  # the folder holding this mvc_magics package
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != tree]
    env["PYTHONPATH"] = os.pathsep.join([tree, *paths])
    env.pop("MVC_DIR", None)
    env.pop("MPLBACKEND", None)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env.update(extra or {})
    return env


def run_notebook(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    timeout: int = 600,
    kernel_name: str = "python3",
    env: Mapping[str, str] | None = None,
) -> NotebookRun:
    """Execute ``source`` in ``out_dir`` (the kernel's working directory) and save the result there.

    Saved outputs in ``source`` are ignored: every cell runs again. The executed notebook is written
    to ``out_dir/<name>.ipynb`` (also when a cell fails, to show where), what the kernel process
    printed outside cells to ``out_dir/kernel.log``, and each PNG figure to
    ``out_dir/figures/<name>-cell<N>-<K>.png``. A failing cell raises
    ``nbclient.exceptions.CellExecutionError`` with the cell's source and traceback.
    """
    import nbformat
    from nbclient import NotebookClient

    source = Path(source).resolve()
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    notebook = nbformat.read(source, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    client = NotebookClient(
        notebook, timeout=timeout, kernel_name=kernel_name, resources={"metadata": {"path": str(out_dir)}}
    )
    executed = out_dir / source.name
    start = time.perf_counter()
    # The kernel's own stderr (TensorFlow's C++ start-up lines, IPython's warnings) goes to a log
    # file beside the executed notebook, not into the terminal of whoever runs the demo.
    with open(out_dir / KERNEL_LOG, "wb") as kernel_log:
        try:
            client.execute(env=kernel_environment(env), stdout=kernel_log, stderr=kernel_log)
        finally:
            nbformat.write(notebook, executed)
    seconds = time.perf_counter() - start
    figures = save_figures(notebook, out_dir / "figures", source.stem)
    return NotebookRun(source=source, executed=executed, figures=figures, seconds=seconds)


def save_figures(notebook, folder: Path, stem: str) -> list[Path]:
    """Write every ``image/png`` output of an executed notebook to ``folder``; return the paths."""
    paths = []
    code_cells = (c for c in notebook.cells if c.cell_type == "code")
    for number, cell in enumerate(code_cells, start=1):
        images = [o["data"]["image/png"] for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
        for k, data in enumerate(images, start=1):
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{stem}-cell{number}-{k}.png"
            path.write_bytes(base64.b64decode(data))
            paths.append(path)
    return paths


def error_outputs(notebook) -> list[str]:
    """``ename: evalue`` of every error output in a notebook (an executed one, or one saved by Jupyter)."""
    return [
        f"{o.get('ename')}: {o.get('evalue')}"
        for cell in notebook.cells if cell.cell_type == "code"
        for o in cell.get("outputs", []) if o.get("output_type") == "error"
    ]


def main(argv: list[str] | None = None) -> int:
    """``python -m mvc_magics.notebook_runner [--out DIR] NOTEBOOK ...``: run each notebook in
    ``DIR/<notebook name>/`` and print how long it took and where its outputs went; exit 1 if any failed."""
    import argparse

    from nbclient.exceptions import CellExecutionError

    parser = argparse.ArgumentParser(prog="python -m mvc_magics.notebook_runner", description=main.__doc__)
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("notebook-output"), help="where to run them")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    args = parser.parse_args(argv)
    failed = []
    for source in args.notebooks:
        folder = args.out / source.stem
        try:
            run = run_notebook(source, folder, timeout=args.timeout)
        except CellExecutionError as exc:
            failed.append(source.name)
            print(f"FAILED {source.name} (executed notebook: {folder / source.name})\n{exc}", flush=True)
            continue
        print(f"ok {source.name}: {run.seconds:.1f}s -> {run.executed} ({len(run.figures)} figures)", flush=True)
    if failed:
        print(f"{len(failed)} of {len(args.notebooks)} notebooks failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
