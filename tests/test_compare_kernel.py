"""%mvc_compare --widget in a real Jupyter kernel: the panel is shown as a widget, not the table."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CELLS = [
    """
import numpy as np
rng = np.random.default_rng(0)
model = {"dense/kernel": rng.standard_normal((3, 2)).astype(np.float32)}
%load_ext mvc_magics
%mvc_commit model -m accurate --metric accuracy=0.95 latency=120
model = {"dense/kernel": rng.standard_normal((3, 2)).astype(np.float32)}
%mvc_commit model -m fast --metric accuracy=0.90 latency=15
""",
    "%mvc_compare --widget --weights accuracy=1,latency=0.1",
    """
panel = _
print(type(panel).__name__, panel.best.message)
panel.slider("accuracy").value = 0.1
panel.slider("latency").value = 1.0
print("after sliders:", panel.best.message)
panel._checkout.click()
import mvc_magics
print("head:", mvc_magics.Repo().head("model").message)
""",
    "%mvc_compare --plot --diff",
]


def test_widget_panel_in_a_real_kernel(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("ipywidgets")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("MVC_DIR", str(tmp_path / ".mvc"))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(src.strip()) for src in CELLS])
    client = nbclient.NotebookClient(notebook, timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    widget_output = notebook.cells[1].outputs
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in widget_output), widget_output
    text = "".join(o.get("text", "") for o in notebook.cells[2].outputs)
    assert "ComparePanel accurate" in text
    assert "after sliders: fast" in text
    assert "head: fast" in text
    kinds = [set(o.get("data", {})) for o in notebook.cells[3].outputs]
    assert sum("image/png" in k for k in kinds) == 2, kinds  # the comparison chart and the diff chart
    assert "text/html" in kinds[-1]  # the returned Comparison, as a rich table
