"""Automation and provenance in a real Jupyter kernel: history numbers, rich output, the graph figure."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CELLS = [
    """
import numpy as np
w = {"kernel": np.zeros((3, 2), np.float32)}
x_train = np.arange(6.0).reshape(3, 2)
""",
    "%load_ext mvc_magics",
    "%mvc_autocommit w",
    "w['kernel'] = w['kernel'] + x_train  # step 1",
    "print('no weights touched')",
    """
w['kernel'] = w['kernel'] * 2  # step 2
%mvc_commit w --data x_train -m explicit
""",
    "%mvc_show HEAD --code",
    "%mvc_log --graph",
    "from mvc_magics.magics.output import output_mode; print(output_mode(get_ipython()))",
]


def test_autocommit_provenance_and_graph_in_a_real_kernel(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("MVC_DIR", str(tmp_path / ".mvc"))
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(src.strip()) for src in CELLS])
    client = nbclient.NotebookClient(notebook, timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()

    from mvc_magics import Repo

    with Repo(tmp_path / ".mvc") as repo:
        log = repo.log("w")
        # started, step 1 (autocommit), explicit commit (so autocommit had nothing left to do)
        assert [v.message for v in log] == ["explicit", "w['kernel'] = w['kernel'] + x_train  # step 1",
                                            "autocommit started"]
        cells = log[0].provenance["cells"]
        assert [c["number"] for c in cells] == [5, 6]  # execution counts from the kernel's history
        assert cells[-1]["source"].startswith("w['kernel'] = w['kernel'] * 2  # step 2")
        assert log[0].provenance["data"]["x_train"]["shape"] == [3, 2]
        first = log[-1].provenance["cells"]
        assert first[0]["source"].startswith("import numpy as np")  # run before %load_ext

    show = notebook.cells[6].outputs
    html = "".join(o.get("data", {}).get("text/html", "") for o in show)
    assert "Version" in html and "x_train" in html and "step 2" in html
    graph = [set(o.get("data", {})) for o in notebook.cells[7].outputs]
    assert any("image/png" in kinds for kinds in graph), graph
    mode = "".join(o.get("text", "") for o in notebook.cells[8].outputs).strip()
    assert mode == "widget"
