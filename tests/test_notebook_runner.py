"""The headless notebook runner behind the demo, the notebook tests and the Binder check."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient.exceptions import CellExecutionError
from nbformat.v4 import new_code_cell, new_notebook, new_output

from mvc_magics.notebook_runner import error_outputs, kernel_environment, main, run_notebook

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.timeout(300)


def write_notebook(path: Path, *sources: str) -> Path:
    notebook = new_notebook(cells=[new_code_cell(s) for s in sources])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, path)
    return path


def test_kernel_environment_imports_this_tree_and_its_own_store(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", f"/elsewhere{os.pathsep}{ROOT}")
    monkeypatch.setenv("MVC_DIR", "/some/shared/store")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    env = kernel_environment({"EXTRA": "1"})
    paths = env["PYTHONPATH"].split(os.pathsep)
    assert paths[0] == str(ROOT) and paths.count(str(ROOT)) == 1 and "/elsewhere" in paths
    assert "MVC_DIR" not in env and "MPLBACKEND" not in env and env["EXTRA"] == "1"


def test_runs_in_the_output_folder_with_this_tree_and_saves_figures(tmp_path):
    source = write_notebook(
        tmp_path / "demo.ipynb",
        "import os, mvc_magics\nprint(os.getcwd())\nprint(mvc_magics.__file__)",
        "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()",
    )
    source_text = source.read_text()
    out = tmp_path / "out"
    run = run_notebook(source, out)
    executed = nbformat.read(run.executed, as_version=4)
    cwd, imported = executed.cells[0].outputs[0]["text"].split()
    assert Path(cwd) == out
    assert Path(imported).resolve().parents[1] == ROOT, "the kernel imports the tree under test"
    assert [p.name for p in run.figures] == ["demo-cell2-1.png"]
    assert run.figures[0].read_bytes().startswith(b"\x89PNG")
    assert source.read_text() == source_text, "the source notebook is not modified"


def test_saved_outputs_are_not_trusted(tmp_path):
    path = write_notebook(tmp_path / "stale.ipynb", "x = 2\nx")
    notebook = nbformat.read(path, as_version=4)
    notebook.cells[0].outputs = [new_output("execute_result", {"text/plain": "999"}, execution_count=1)]
    nbformat.write(notebook, path)
    run = run_notebook(path, tmp_path / "out")
    outputs = nbformat.read(run.executed, as_version=4).cells[0].outputs
    assert [o["data"]["text/plain"] for o in outputs] == ["2"]


def test_a_failing_cell_raises_and_the_executed_notebook_shows_where(tmp_path):
    source = write_notebook(tmp_path / "broken.ipynb", "print('before')", "1 / 0", "print('never')")
    with pytest.raises(CellExecutionError, match="ZeroDivisionError"):
        run_notebook(source, tmp_path / "out")
    executed = nbformat.read(tmp_path / "out" / "broken.ipynb", as_version=4)
    assert error_outputs(executed) == ["ZeroDivisionError: division by zero"]
    assert executed.cells[2].outputs == []


def test_command_line_reports_and_fails_on_a_broken_notebook(tmp_path, capsys):
    good = write_notebook(tmp_path / "good.ipynb", "print('fine')")
    bad = write_notebook(tmp_path / "bad.ipynb", "raise ValueError('nope')")
    assert main([str(good), str(bad), "--out", str(tmp_path / "runs")]) == 1
    printed = capsys.readouterr().out
    assert "ok good.ipynb" in printed and "FAILED bad.ipynb" in printed
    assert "1 of 2 notebooks failed: bad.ipynb" in printed
    assert (tmp_path / "runs" / "good" / "good.ipynb").exists()
