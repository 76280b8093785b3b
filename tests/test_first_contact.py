"""The paths a new user takes first (issue 25): a real shell, a real store, real subprocesses."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from IPython.core.error import UsageError

from mvc_magics import Repo

ROOT = Path(__file__).resolve().parents[1]


# -- 1. a bare %mvc_commit in a notebook full of data ----------------------------------------


def test_a_bare_commit_finds_the_model_among_arrays_and_frames(ip):
    pd = pytest.importorskip("pandas")
    ip.run_cell("import numpy as np, pandas as pd\n"
                "x = np.arange(12.0).reshape(6, 2)\n"
                "y = np.ones(6)\n"
                "frame = pd.DataFrame({'a': [1, 2], 'b': [3.0, 4.0]})\n"
                "series = frame['a']\n"
                "empty = {}\n"
                "labels = {'a': [1, 2]}\n"
                "scale = np.float32(2.0)\n"
                "model = {'w': np.ones((2, 2), np.float32)}\n")
    assert isinstance(ip.user_ns["frame"], pd.DataFrame)
    version = ip.run_line_magic("mvc_commit", "")
    assert version.name == "model" and Repo(".mvc").models() == ["model"]


def test_a_bare_commit_with_only_data_says_to_name_the_model(ip):
    ip.run_cell("import numpy as np\nx = np.arange(12.0)\ny = np.ones((3, 3))")
    with pytest.raises(UsageError, match="no model is in the notebook"):
        ip.run_line_magic("mvc_commit", "")


# -- 2. a trailing "# comment" on every magic, as the README writes them ----------------------


def _outcome(ip, magic: str, line: str) -> tuple[str, str]:
    """What running the magic shows: its error (one line) or its printed text and result."""
    from contextlib import redirect_stdout
    from io import StringIO

    out = StringIO()
    try:
        with redirect_stdout(out):
            result = ip.run_line_magic(magic, line)
    except UsageError as exc:
        return "error", str(exc)
    return "ok", re.sub(r"0x[0-9a-f]+", "", out.getvalue() + repr(result))


ARGUMENT_LINES = {"mvc_init": ".mvc", "mvc_commit": "model -m first", "mvc_checkout": "latest model",
                  "mvc_log": "model", "mvc_tag": "latest candidate --force", "mvc_show": "latest",
                  "mvc_compare": "latest", "mvc_remote": "list", "mvc_audit": "-n 1",
                  "mvc_gc": "--dry-run --keep last:5", "mvc_autocommit": "", "mvc_push": "nowhere",
                  "mvc_pull": "nowhere", "mvc_merge": "latest latest", "mvc_rm": "nothing-like-this",
                  "mvc_export": "latest", "mvc_status": "", "mvc_du": "",
                  "mvc_publish": "nothing-like-this mlflow somewhere"}


def test_every_magic_accepts_a_trailing_comment(ip):
    ip.run_cell("import numpy as np\nmodel = {'w': np.ones(3, np.float32)}")
    ip.run_line_magic("mvc_commit", "model -m first")
    magics = sorted(name for name in ip.magics_manager.magics["line"] if name.startswith("mvc_"))
    assert set(magics) <= set(ARGUMENT_LINES), f"add a line for {set(magics) - set(ARGUMENT_LINES)}"
    for magic in magics:
        line = ARGUMENT_LINES[magic]
        plain = _outcome(ip, magic, line)
        commented = _outcome(ip, magic, f"{line}   # what this does, with -x --flags and 'quotes")
        assert commented == plain, magic


def test_the_readme_quick_start_runs_when_pasted(ip):
    readme = (ROOT / "README.md").read_text()
    block = readme.split("```python\n", 1)[1].split("```", 1)[0]
    magic_lines = [line for line in block.splitlines() if line.startswith("%mvc_")]
    assert any("#" in line for line in magic_lines) and any(line.startswith("%mvc_status") for line in magic_lines)
    ip.run_cell("import numpy as np\nmodel = {'w': np.ones(3, np.float32)}")
    for line in magic_lines:
        if line.startswith("%mvc_checkout best:"):  # the quick start's model has fit metrics; ours none
            line = line.replace("best:val_mse", "latest")
        magic, _, rest = line[1:].partition(" ")
        ip.run_line_magic(magic, rest)
        ip.user_ns["model"] = {"w": ip.user_ns["model"]["w"] + 1}
    assert "older" in ip.user_ns


def test_the_notebook_docs_no_longer_forbid_trailing_comments():
    text = (ROOT / "docs" / "notebooks.md").read_text()
    assert "take no trailing `# comment`" not in text
    assert "trailing `# comment`" in text


# -- 5. one-line errors where a newcomer trips ------------------------------------------------


def test_init_under_a_file_is_one_line(ip, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(UsageError) as error:
        ip.run_line_magic("mvc_init", str(blocker / "store"))
    assert "\n" not in str(error.value) and str(blocker / "store") in str(error.value)
    assert "not a directory" in str(error.value).lower()


def _mvc(*args: str, stdout=subprocess.PIPE) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MVC_DIR"}
    env.update({"PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"})
    return subprocess.run([sys.executable, "-m", "mvc_magics.cli", *args], stdout=stdout,
                          stderr=subprocess.PIPE, text=True, env=env, timeout=120)


def test_cli_store_under_a_file_is_one_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = _mvc("clone", "file:///nowhere", str(blocker / "store"))
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    result = _mvc("--store", str(blocker / "store"), "log")
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr


def test_cli_output_into_a_closed_pipe_is_quiet(tmp_path):
    with Repo(tmp_path / ".mvc") as repo:
        for step in range(3):
            repo.commit({"w": np.full(3, step, np.float32)}, "m", message=f"step {step}")
    read, write = os.pipe()
    os.close(read)  # `mvc show latest | head -0`: the reader is gone before anything is written
    try:
        for command in (["show", "latest"], ["log"]):
            result = _mvc("--store", str(tmp_path / ".mvc"), *command, stdout=write)
            assert "Traceback" not in result.stderr and "BrokenPipeError" not in result.stderr, result.stderr
            assert result.stderr == "" and result.returncode == 141
    finally:
        os.close(write)


# -- 8. refs and model names -----------------------------------------------------------------


def _two_versions(ip):
    ip.run_cell("import numpy as np\nmodel = {'w': np.ones(3, np.float32)}")
    first = ip.run_line_magic("mvc_commit", "model -m first")
    ip.run_cell("model = {'w': np.full(3, 2, np.float32)}")
    second = ip.run_line_magic("mvc_commit", "model -m second")
    return first, second


def test_checkout_into_another_variable_does_not_make_it_a_model(ip):
    first, _second = _two_versions(ip)
    ip.run_cell("m = {'w': np.zeros(3, np.float32)}")
    ip.run_line_magic("mvc_checkout", f"{first.short_id} m --model model")
    assert ip.user_ns["m"]["w"].tolist() == [1, 1, 1]
    repo = Repo(".mvc")
    assert repo.models() == ["model"]
    assert [e.name for e in ip.run_line_magic("mvc_status", "")] == ["model"]


def test_checkout_as_a_new_variable_leaves_the_models_head(ip):
    _first, second = _two_versions(ip)
    ip.run_line_magic("mvc_checkout", "HEAD~1 --as older")
    assert ip.user_ns["older"]["w"].tolist() == [1, 1, 1]
    (entry,) = ip.run_line_magic("mvc_status", "")
    assert entry.head.id == second.id and entry.changed is False  # `model` was not touched
    ip.run_cell("model = {'w': np.full(3, 3, np.float32)}")
    third = ip.run_line_magic("mvc_commit", "model -m third")
    assert third.parents == (second.id,)


def test_head_without_a_head_in_this_notebook_suggests_latest(ip):
    with Repo(".mvc") as repo:  # committed elsewhere (a script): this notebook has no HEAD of it
        repo.commit({"w": np.ones(3)}, "net")
        repo.commit({"w": np.zeros(3)}, "net")
    ip.user_ns["__session__"] = str(Path.cwd() / "analysis.ipynb")
    try:
        with pytest.raises(UsageError, match=r"latest~2"):
            ip.run_line_magic("mvc_checkout", "HEAD~2 --model net --as old")
    finally:
        del ip.user_ns["__session__"]


def test_an_ancestor_that_was_removed_is_named_as_removed(ip):
    with Repo(".mvc") as repo:
        repo.commit({"w": np.ones(3)}, "net")
        middle = repo.commit({"w": np.zeros(3)}, "net")
        repo.commit({"w": np.full(3, 2.0)}, "net")
        repo.remove(middle.id, name="net")
    with pytest.raises(UsageError) as error:
        ip.run_line_magic("mvc_checkout", "latest~1 --model net --as old")
    message = str(error.value)
    assert "removed" in message and middle.id[:8] in message and "latest~1" in message


def test_merge_into_a_new_variable_leaves_the_models_head(ip):
    first, second = _two_versions(ip)
    ip.run_line_magic("mvc_merge", f"{first.short_id} {second.short_id} --into soup")
    assert ip.user_ns["soup"]["w"].tolist() == [1.5, 1.5, 1.5]
    (entry,) = [e for e in ip.run_line_magic("mvc_status", "") if e.name == "model"]
    assert entry.head.id == second.id and entry.changed is False  # `model` was not touched


def test_committing_the_content_of_another_models_version_starts_its_history_there(ip, capsys):
    first, second = _two_versions(ip)
    ip.run_cell("other = {'w': np.ones(3, np.float32)}")  # the content of model's first version
    capsys.readouterr()
    ip.run_line_magic("mvc_commit", "other")
    said = capsys.readouterr().out
    assert first.short_id in said and "a version of 'model': now in the history of 'other'" in said
    assert [v.id for v in ip.run_line_magic("mvc_log", "other")] == [first.id]  # (tests/test_histories.py)
    ip.run_cell("other = {'w': np.full(3, 5, np.float32)}")
    own = ip.run_line_magic("mvc_commit", "other")
    assert own.name == "other" and own.parents == (first.id,)
    assert [v.id for v in ip.run_line_magic("mvc_log", "other")] == [own.id, first.id]
    assert [v.id for v in ip.run_line_magic("mvc_log", "model")] == [second.id, first.id]
