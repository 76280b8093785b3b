"""The teaching notebooks are tests: each runs top to bottom with a real Jupyter kernel.

Every notebook in ``notebooks/`` is executed afresh (saved outputs are not trusted; they are not
even committed) in a temp copy, with a kernel that imports this checkout (``PYTHONPATH``), and
must raise nothing. Then what the notebook teaches is checked in the store it left behind.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import nbformat
import pytest

from mvc_magics import Repo, demo
from mvc_magics.notebook_runner import error_outputs, run_notebook

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))

pytestmark = pytest.mark.timeout(600)


def execute(name: str, folder: Path):
    """Copy notebooks/<name> into ``folder`` and run it there (the kernel's cwd)."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "notebooks" / name, folder / name)
    run = run_notebook(folder / name, folder)
    executed = nbformat.read(run.executed, as_version=4)
    assert not error_outputs(executed)
    print(f"{name}: {run.seconds:.1f}s")
    return run, executed


def outputs_text(notebook) -> str:
    parts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            parts.append(output.get("text", "") or output.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def test_there_are_teaching_notebooks():
    names = [p.name for p in NOTEBOOKS]
    expected_notebooks = ("00-origin-document", "01-quickstart", "02-compare-with-widgets", "03-model-soups",
                          "04-team-lifecycle")
    for expected in (f"{stem}.ipynb" for stem in expected_notebooks):
        assert expected in names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_clean(path):
    """No outputs, no execution counts, a python3 kernel, and a store of its own."""
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    assert notebook.metadata["kernelspec"]["name"] == "python3"
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: outputs saved"
    source = "\n".join(c.source for c in notebook.cells)
    assert "%load_ext mvc_magics" in source


def test_each_notebook_has_a_store_of_its_own():
    """Each notebook's stores live under a folder no other notebook uses, which it empties first."""
    roots = {}
    for path in NOTEBOOKS:
        source = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells)
        found = {Path(p).parts[0] for p in re.findall(r"^%mvc_init (\S+)$", source, re.M)}
        assert len(found) == 1, f"{path.name} keeps its stores in one folder: {found}"
        roots[path.name] = root = found.pop()
        assert root.startswith(".mvc-"), "stores are hidden and gitignored"
        assert f'shutil.rmtree("{root}", ignore_errors=True)' in source, "re-runnable from an empty store"
    assert len(set(roots.values())) == len(roots), roots


def quickstart_story(folder: Path) -> list[str]:
    with Repo(folder / ".mvc-quickstart", create=False) as repo:
        messages = [v.message for v in repo.log("model")]
        assert {"10 epochs", "50 epochs", "100 epochs"} <= set(messages)
        assert repo.resolve("best:val_mse", name="model").message == "100 epochs"
        assert repo.resolve("halfway", name="model").message == "50 epochs"
        assert repo.verify().ok
    return messages


def test_quickstart_and_again_through_the_demo(tmp_path, capsys):
    """The whole walk-through; then, re-runnable: a second run over the same folder, through the
    README's main command (``python -m mvc_magics.demo FOLDER``), starts afresh and tells the same story."""
    run, executed = execute("01-quickstart.ipynb", tmp_path)
    source = "\n".join(c.source for c in executed.cells)
    for magic in ("%mvc_commit", "%mvc_checkout", "%mvc_compare", "%mvc_merge", "%mvc_log", "%mvc_status"):
        assert magic in source, f"the quickstart shows {magic}"
    assert run.figures, "the quickstart draws the versions' predictions"
    assert "modified since HEAD" in outputs_text(executed), "status shows the experiment changed the weights"
    first = quickstart_story(tmp_path)
    capsys.readouterr()
    assert demo.main([str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert f"executed notebook: {tmp_path / '01-quickstart.ipynb'}" in printed
    assert f"figure: {tmp_path / 'figures'}" in printed
    assert "OK: best:val_mse is the 100-epoch version" in printed
    assert quickstart_story(tmp_path) == first


def test_compare_with_widgets(tmp_path):
    run, executed = execute("02-compare-with-widgets.ipynb", tmp_path)
    widget_views = [
        o for c in executed.cells for o in c.get("outputs", [])
        if "application/vnd.jupyter.widget-view+json" in o.get("data", {})
    ]
    assert widget_views, "the compare panel is displayed as a widget"
    assert run.figures, "--plot draws the scores"
    text = outputs_text(executed)
    with Repo(tmp_path / ".mvc-compare", create=False) as repo:
        versions = repo.log("clf")
        assert len(versions) == 5
        by_accuracy = repo.compare(name="clf", weights={"val_accuracy": 1}).best
        for_phone = repo.compare(name="clf", weights={"val_accuracy": 1, "size_kb": 1}).best
        assert by_accuracy.message == "30 epochs" and "pruned" in for_phone.message, "weights change the winner"
        assert repo.head("clf").id == for_phone.id, "the notebook checked the winner out"
        dense = repo.resolve("dense", name="clf")
        pruned = [v for v in versions if "pruned" in v.message]
        assert len(pruned) == 2 and all(v.parents == (dense.id,) for v in pruned)
        assert all(v.metrics["size_kb"] < dense.metrics["size_kb"] for v in pruned)
    assert f"best by accuracy alone: {by_accuracy.short_id}" in text
    assert re.search(r"best when size weighs 5x: \w+ clf '30 epochs, pruned", text), "the slider flips the winner"


def test_model_soups(tmp_path):
    run, executed = execute("03-model-soups.ipynb", tmp_path)
    assert run.figures, "the accuracy plot"
    table = next(o["data"]["text/plain"] for c in executed.cells for o in c.get("outputs", [])
                 if "test accuracy" in o.get("data", {}).get("text/plain", ""))
    for row in ("best single", "uniform soup", "greedy soup", "ensemble"):
        assert row in table
    with Repo(tmp_path / ".mvc-soups", create=False) as repo:
        fine_tunes = [repo.resolve(f"ft-{i}", name="net") for i in range(1, 6)]
        pretrained = repo.resolve("pretrained", name="net")
        assert all(ft.parents == (pretrained.id,) for ft in fine_tunes), "every fine-tune starts from pretrained"
        uniform = repo.resolve("uniform-soup", name="net")
        greedy = repo.resolve("greedy-soup", name="net")
        assert set(uniform.parents) == {ft.id for ft in fine_tunes}
        assert set(greedy.parents) == {ft.id for ft in fine_tunes}
        best_single = max(ft.metrics["val_accuracy"] for ft in fine_tunes)
        assert greedy.metrics["val_accuracy"] >= best_single, "greedy soup >= best ingredient on validation"
        ensembles = repo.log("net_ensemble")
        assert len(ensembles) == 1 and set(ensembles[0].parents) == {ft.id for ft in fine_tunes}
        # Task-vector merges: the base is the fine-tunes' merge base, found in the history, and a parent.
        by_method = {(v.extra.get("merge") or {}).get("method"): v for v in repo.log("net")}
        for method in ("task_arithmetic", "ties", "dare_ties", "model_stock"):
            merged = by_method[method]
            assert merged.parents == (*(ft.id for ft in fine_tunes), pretrained.id), method
            assert merged.extra["merge"]["base_found"] == "merge base"
        assert repo.head("net").id == repo.resolve("best:val_accuracy", name="net").id
    text = outputs_text(executed)
    assert "every merge's base is pretrained: True" in text
    assert "%mvc_merge " in text and "--method dare_ties" in text  # %mvc_show's line to redo the merge


def test_team_lifecycle(tmp_path):
    run, executed = execute("04-team-lifecycle.ipynb", tmp_path)
    assert len(run.figures) == 2, "the history graph, before and after"
    assert "refused: tag 'production' is protected" in outputs_text(executed)
    stores = tmp_path / ".mvc-team"
    with Repo(stores / "bob", create=False) as bob, Repo(stores / "alice", create=False) as alice:
        production = bob.resolve("production", name="clf")
        assert production.id == bob.resolve("staging", name="clf").id
        assert alice.resolve("production", name="clf").id == production.id, "Alice pulled Bob's decision"
        assert alice.resolve("HEAD", name="clf").id != production.id, "her later commit did not move it"
        baseline = alice.resolve("HEAD~2", name="clf")
        children = [v for v in alice.log("clf") if v.parents == (baseline.id,)]
        assert len(children) == 2, "a branch: two versions share the baseline"
        assert alice.verify().ok and bob.verify().ok


def test_sklearn_and_pytorch_side_by_side(tmp_path):
    """The same magics version a scikit-learn pipeline and a PyTorch CNN; each history keeps its framework."""
    pytest.importorskip("torch", reason="PyTorch is not installed (the notebook would skip its PyTorch half)")
    _run, executed = execute("05-sklearn-and-pytorch.ipynb", tmp_path)
    text = outputs_text(executed)
    assert "averaging is meaningful only for linear models" in text
    assert "resumed exactly: True" in text
    with Repo(tmp_path / ".mvc-frameworks", create=False) as repo:
        assert {v.framework for v in repo.log("clf")} == {"sklearn"}
        assert {v.framework for v in repo.log("cnn")} == {"torch"}
        assert type(repo.checkout("latest", name="clf_vote")).__name__ == "VotingClassifier"
        assert len(repo.log("cnn.optimizer")) == 2
        assert repo.verify().ok


def test_origin_document_step_by_step(tmp_path):
    """The origin document's section 4 with its own code: versions, best by MSE, D, merge, deploy."""
    pytest.importorskip("tf_keras", reason="tf_keras is not installed (the document's Keras 2)")
    _run, executed = execute("00-origin-document.ipynb", tmp_path)
    text = outputs_text(executed)
    assert "rebuilding it runs that class's code" in text  # --as without --unsafe is refused, politely
    import numpy as np

    with Repo(tmp_path / ".mvc-origin", create=False) as repo:
        log = repo.log("model")
        assert [v.message for v in log][-3:] == ["500 epochs", "100 epochs, SGD lr=0.01", "untrained"]
        assert {v.framework for v in log} == {"tf_keras"}
        assert [e.name for e in repo.manifest(log[-1].id)] == ["b", "w"]
        best = repo.resolve("best:val_mse", name="model")
        assert repo.resolve("production", name="model").id == best.id and best.message == "500 epochs"
        merged = log[0]
        assert len(merged.parents) == 2 and merged.extra["merge"]["weights"] == [0.25, 0.75]
        a, b = (repo.load_state(p) for p in merged.parents)
        mean = ((a["w"].astype(np.float64) + 3 * b["w"]) / 4).astype(np.float32)
        assert repo.load_state(merged)["w"].tobytes() == mean.tobytes()
        assert repo.verify().ok
    assert (tmp_path / "origin-production" / "saved_model.pb").exists()
