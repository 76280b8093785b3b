"""The core magics through a real IPython shell."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import store_state
from IPython.core.error import UsageError

from mvc_magics import Repo, Version

ROOT = Path(__file__).resolve().parents[1]


def make_model(ip, name="net", value=1.0):
    ip.user_ns[name] = {"w": np.full((3, 2), value, np.float32), "b": np.zeros(2, np.float32)}
    return ip.user_ns[name]


def test_commit_returns_the_version_and_prints_one_line(ip, capsys, tmp_path):
    make_model(ip)
    version = ip.run_line_magic("mvc_commit", 'net -m "first try" --metric acc=0.9 loss=0.2 --param lr=0.01 --tag base')
    assert isinstance(version, Version)
    assert version.message == "first try" and version.metrics == {"acc": 0.9, "loss": 0.2}
    assert version.params == {"lr": 0.01} and version.tags == ("base",)
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    assert out[0].startswith(f"committed {version.short_id} net 'first try': 2 tensors written, 0 reused, 32 B")
    assert (tmp_path / ".mvc" / "FORMAT").exists()  # the default store is beside the notebook (cwd)


def test_commit_unchanged_model_reports_the_existing_version(ip, capsys):
    make_model(ip)
    first = ip.run_line_magic("mvc_commit", "net")
    again = ip.run_line_magic("mvc_commit", "net --metric extra=1")
    assert again.id == first.id and again.metrics == {"extra": 1.0}
    assert "unchanged" in capsys.readouterr().out


def test_v_equals_commit_works_in_a_cell(ip):
    make_model(ip)
    result = ip.run_cell("v = %mvc_commit net -m 'from a cell'")
    assert result.success and ip.user_ns["v"].message == "from a cell"


def test_checkout_in_place_and_as_new_variable(ip):
    model = make_model(ip)
    first = ip.run_line_magic("mvc_commit", "net -m one")
    model["w"] = model["w"] * 5
    ip.run_line_magic("mvc_commit", "net -m two")
    ip.run_line_magic("mvc_checkout", f"{first.short_id} net")
    assert ip.user_ns["net"] is model and np.all(model["w"] == 1.0)
    ip.run_line_magic("mvc_checkout", "latest --as newest")
    assert np.all(ip.user_ns["newest"]["w"] == 5.0)
    assert ip.user_ns["net"] is model and np.all(model["w"] == 1.0)
    ip.run_line_magic("mvc_checkout", "latest")  # the only model is meant when none is named
    assert np.all(model["w"] == 5.0)


def test_log_status_and_tag(ip):
    model = make_model(ip)
    ip.run_line_magic("mvc_commit", "net -m one --metric val_loss=0.5")
    model["b"] = model["b"] + 1
    second = ip.run_line_magic("mvc_commit", "net -m two --metric val_loss=0.1")
    log = ip.run_line_magic("mvc_log", "net -n 1")
    assert [v.id for v in log] == [second.id]
    assert "two" in str(log) and "val_loss" in log._repr_html_()
    ip.run_line_magic("mvc_tag", "HEAD~1 baseline")
    assert Repo(".mvc").resolve("baseline").message == "one"
    with pytest.raises(UsageError, match="--force"):
        ip.run_line_magic("mvc_tag", "latest baseline")
    ip.run_line_magic("mvc_tag", "latest baseline --force")
    assert Repo(".mvc").resolve("baseline").id == second.id
    ip.run_line_magic("mvc_tag", "baseline --delete")
    assert Repo(".mvc").log("net")[0].tags == ()
    status = ip.run_line_magic("mvc_status", "")
    assert [(e.name, e.changed) for e in status] == [("net", False)]
    model["b"] = model["b"] + 1
    assert ip.run_line_magic("mvc_status", "")[0].changed
    assert "modified since HEAD" in str(ip.run_line_magic("mvc_status", ""))


def test_each_model_variable_has_its_own_history(ip):
    make_model(ip, "a", 1.0)
    make_model(ip, "b", 2.0)
    ip.run_line_magic("mvc_commit", "a --metric acc=0.5")
    ip.run_line_magic("mvc_commit", "b --metric acc=0.7")
    assert [v.name for v in ip.run_line_magic("mvc_log", "a")] == ["a"]
    assert len(ip.run_line_magic("mvc_log", "")) == 2
    with pytest.raises(UsageError, match="several"):
        ip.run_line_magic("mvc_commit", "")
    ip.user_ns["a"]["w"][:] = 9
    ip.run_line_magic("mvc_checkout", "best:acc a")
    assert np.all(ip.user_ns["a"]["w"] == 1.0)


def test_init_moves_the_store(ip, tmp_path):
    make_model(ip)
    ip.run_line_magic("mvc_init", str(tmp_path / "elsewhere"))
    ip.run_line_magic("mvc_commit", "net")
    assert len(Repo(tmp_path / "elsewhere").log()) == 1
    assert not (tmp_path / ".mvc").exists()


@pytest.mark.parametrize(
    ("magic", "line", "message"),
    [
        ("mvc_commit", "nope", "no variable named 'nope'"),
        ("mvc_commit", "text", "cannot version a str"),
        ("mvc_commit", "empty", "no variables"),
        ("mvc_commit", "net --metric acc=high", "must be a number"),
        ("mvc_commit", "net --metric acc", "KEY=VALUE"),
        ("mvc_commit", "net --tag ../x", "must not contain"),
        ("mvc_commit", "net --tag .hidden", "must not start with a dot"),
        ("mvc_commit", "net --bogus", "unrecognized arguments"),
        ("mvc_commit", 'net -m "unbalanced', "cannot parse"),
        ("mvc_checkout", "nothing net", "no version of 'net' matches 'nothing'"),
        ("mvc_checkout", "latest small --model net", "shape mismatch"),
        ("mvc_checkout", "latest small", "shape mismatch"),
        ("mvc_checkout", "latest nobody --model nobody", "no versions"),
        ("mvc_checkout", "best:f1 net", "no version of 'net' has a finite 'f1'"),
        ("mvc_tag", "latest base", "already on"),
        ("mvc_tag", "latest a/b", "must not contain"),
        ("mvc_log", "net -n -1", "-n must be"),
        ("mvc_status", "extra", "takes no arguments"),
    ],
)
def test_bad_input_is_a_one_line_usage_error_and_changes_nothing(ip, magic, line, message):
    model = make_model(ip)
    ip.user_ns["text"] = "hello"
    ip.user_ns["empty"] = {}
    ip.user_ns["small"] = {"w": np.zeros((1, 1), np.float32), "b": np.zeros(2, np.float32)}
    ip.run_line_magic("mvc_commit", "net --tag base --metric acc=0.5")
    model["w"] = model["w"] + 1
    ip.run_line_magic("mvc_commit", "net")
    before = store_state(Path(".mvc"))
    live = {k: v.copy() for k, v in model.items()}
    small = {k: v.copy() for k, v in ip.user_ns["small"].items()}
    with pytest.raises(UsageError) as err:
        ip.run_line_magic(magic, line)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert store_state(Path(".mvc")) == before
    assert all(np.array_equal(model[k], live[k]) for k in live)
    assert all(np.array_equal(ip.user_ns["small"][k], small[k]) for k in small)


def test_usage_error_shows_no_traceback(ip, capsys):
    result = ip.run_cell("%mvc_checkout nothing")
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert not result.success
    assert "UsageError" in text and "Traceback" not in text


def test_help_documents_each_magic(ip):
    for name in ("mvc_commit", "mvc_checkout", "mvc_log", "mvc_tag", "mvc_status", "mvc_init"):
        doc = ip.find_line_magic(name).__doc__
        assert f"%{name}" in doc or name == "mvc_status"
        assert len(doc.strip().splitlines()) > 2


def test_reload_and_unload(ip):
    ip.run_line_magic("reload_ext", "mvc_magics")
    assert "mvc_commit" in ip.magics_manager.magics["line"]
    ip.run_line_magic("unload_ext", "mvc_magics")
    assert not [m for m in ip.magics_manager.magics["line"] if m.startswith("mvc_")]
    ip.run_line_magic("load_ext", "mvc_magics")
    assert "mvc_commit" in ip.magics_manager.magics["line"]


def test_load_ext_is_fast_and_does_not_import_tensorflow():
    code = textwrap.dedent("""
        import sys, time
        from IPython.core.interactiveshell import InteractiveShell
        ip = InteractiveShell.instance()
        start = time.perf_counter()
        ip.run_line_magic("load_ext", "mvc_magics")
        elapsed = time.perf_counter() - start
        print(elapsed, "tensorflow" in sys.modules, "keras" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(Path.home())})
    elapsed, tf_loaded, keras_loaded = out.stdout.split()
    assert tf_loaded == "False" and keras_loaded == "False"
    print(f"load_ext took {float(elapsed):.3f}s")


def test_same_content_under_another_name_joins_its_history_and_says_so(ip, capsys):
    make_model(ip, "a")
    first = ip.run_line_magic("mvc_commit", "a")
    ip.user_ns["b"] = {k: v.copy() for k, v in ip.user_ns["a"].items()}
    again = ip.run_line_magic("mvc_commit", "b")
    assert again.id == first.id and again.name == "b"  # the version, in b's history (tests/test_histories.py)
    assert "the same content as a version of 'a': now in the history of 'b' too" in capsys.readouterr().out
    assert ip.run_line_magic("mvc_status", "")[1].head.id == first.id  # b is tracked at that version


def test_trailing_comment_is_ignored_and_hash_in_quotes_kept(ip):
    make_model(ip)
    version = ip.run_line_magic("mvc_commit", 'net -m "run #1"  # the first run')
    assert version.message == "run #1"


def test_unexpanded_dollar_variable_is_explained(ip):
    make_model(ip)
    with pytest.raises(UsageError, match=r"\$acc was not expanded"):
        ip.run_line_magic("mvc_commit", "net --metric a=$acc")


def test_configured_default_model_is_used_when_none_is_named(ip):
    make_model(ip, "a", 1.0)
    make_model(ip, "b", 2.0)
    ip.run_line_magic("mvc_commit", "a")
    ip.run_line_magic("mvc_commit", "b -m first")
    ip.run_line_magic("config", 'MVCMagics.default_model = "b"')
    try:
        ip.user_ns["b"]["w"][:] = 7
        version = ip.run_line_magic("mvc_commit", "-m second")
        assert version.name == "b" and version.message == "second"
        ip.run_line_magic("mvc_checkout", "HEAD~1")  # resolved in b's history, loaded into b
        assert np.all(ip.user_ns["b"]["w"] == 2.0) and np.all(ip.user_ns["a"]["w"] == 1.0)
    finally:
        ip.run_line_magic("config", 'MVCMagics.default_model = ""')
