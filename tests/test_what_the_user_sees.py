"""Issue 13 §3 (magics) and §4: what the user types is understood, and what is shown is right and quiet."""

from __future__ import annotations

import logging
from pathlib import Path

import nbformat
import numpy as np
import pytest
from IPython.core.error import UsageError

from mvc_magics import Repo
from mvc_magics.core.tables import Table
from tests.conftest import store_state
from tests.test_cli import mvc


def make_model(ip, name="net", value=1.0):
    ip.user_ns[name] = {"w": np.full((3, 2), value, np.float32), "b": np.zeros(2, np.float32)}
    return ip.user_ns[name]


# -- tables -----------------------------------------------------------------------------------


def test_tables_align_columns_holding_wide_characters():
    from mvc_magics.core.tables import display_width

    table = Table(["message", "acc"], [["学習率を下げた", 0.9], ["lower lr", 0.8], ["ｆｕｌｌ", 0.7]])
    lines = table.to_text().splitlines()
    rows = lines[2:]
    # The second column starts at the same terminal column in every row.
    starts = {display_width(row[:row.rindex("0.")]) for row in rows}
    assert len(starts) == 1
    assert display_width("学習") == 4 and display_width("é") == 1 and display_width("e\u0301") == 1


# -- commit -----------------------------------------------------------------------------------


def test_commit_echoes_a_long_message_in_one_short_line_and_keeps_it_whole(ip, capsys):
    make_model(ip)
    message = "x" * 20_000
    version = ip.run_line_magic("mvc_commit", f"net -m {message}")
    out = capsys.readouterr().out
    assert len(out) < 300 and "(20000 characters)" in out
    assert version.message == message


def test_commit_without_a_name_takes_the_only_model_in_the_notebook(ip):
    make_model(ip)
    ip.user_ns["not_a_model"] = [1, 2, 3]
    ip.user_ns["empty"] = {}
    make_model(ip, "other")
    with pytest.raises(UsageError, match="holds several"):
        ip.run_line_magic("mvc_commit", "")
    del ip.user_ns["other"]
    version = ip.run_line_magic("mvc_commit", "")
    assert version.name == "net"


def test_commit_into_another_models_history_with_model(ip):
    make_model(ip)
    ip.run_line_magic("mvc_commit", "net")
    make_model(ip, "candidate", value=2.0)
    version = ip.run_line_magic("mvc_commit", "candidate --model net -m tried")
    assert version.name == "net" and version.stats.new_version
    assert [v.message for v in ip.run_line_magic("mvc_log", "net")] == ["tried", ""]
    assert "candidate" not in ip.run_line_magic("mvc_log", "").__str__()


# -- checkout, init, log ------------------------------------------------------------------------


def test_in_place_checkout_into_a_missing_variable_is_an_error_suggesting_as(ip):
    make_model(ip, "model")
    ip.run_line_magic("mvc_commit", "model")
    before = store_state(Path(".mvc"))
    with pytest.raises(UsageError, match="--as modle"):
        ip.run_line_magic("mvc_checkout", "HEAD modle")
    assert "modle" not in ip.user_ns and store_state(Path(".mvc")) == before
    ip.run_line_magic("mvc_checkout", "HEAD --as modle")
    assert "modle" in ip.user_ns


def test_a_failed_init_changes_nothing(ip, tmp_path):
    make_model(ip)
    ip.run_line_magic("mvc_commit", "net")
    with pytest.raises(UsageError):
        ip.run_line_magic("mvc_init", "/proc/nope/.mvc")
    assert [v.name for v in ip.run_line_magic("mvc_log", "")] == ["net"]  # still the store it had
    ip.user_ns["net"]["b"] = ip.user_ns["net"]["b"] + 1
    assert ip.run_line_magic("mvc_commit", "net").stats.new_version


def test_log_of_an_unknown_model_is_an_error(ip):
    make_model(ip)
    ip.run_line_magic("mvc_commit", "net")
    with pytest.raises(UsageError, match=r"no model 'm2'.*net"):
        ip.run_line_magic("mvc_log", "m2")


# -- two models in one store ---------------------------------------------------------------------


@pytest.fixture
def two_models(ip):
    make_model(ip, "a")
    make_model(ip, "b", value=2.0)
    ip.run_line_magic("mvc_commit", "a --tag only-a")
    ip.run_line_magic("mvc_commit", "b --tag only-b")
    ip.user_ns["b"]["b"] = ip.user_ns["b"]["b"] + 1
    ip.run_line_magic("mvc_commit", "b")
    return ip


def test_a_tag_in_one_history_resolves_without_naming_the_model(two_models):
    ip = two_models
    assert ip.run_line_magic("mvc_show", "only-a").version.name == "a"
    ip.run_line_magic("mvc_checkout", "only-b")
    assert ip.user_ns["b"]["b"][0] == 0


def test_an_unknown_ref_is_not_found_with_candidates_not_ambiguous(two_models):
    with pytest.raises(UsageError) as info:
        two_models.run_line_magic("mvc_show", "nonexist")
    text = str(info.value)
    assert "ambiguous" not in text and "no version matches 'nonexist'" in text and "only-a" in text


def test_the_configured_default_model_is_honoured_by_rm(two_models):
    ip = two_models
    ip.run_line_magic("config", 'MVCMagics.default_model = "b"')
    try:
        removed_before = len(Repo(".mvc").log("b"))
        ip.run_line_magic("mvc_rm", "latest")
        assert len(Repo(".mvc").log("b")) == removed_before - 1
        assert len(Repo(".mvc").log("a")) == 1
    finally:
        ip.run_line_magic("config", 'MVCMagics.default_model = ""')


def test_merge_options_may_stand_between_the_refs(ip):
    make_model(ip, "model")
    first = ip.run_line_magic("mvc_commit", "model")
    ip.user_ns["model"]["w"] = ip.user_ns["model"]["w"] + 2
    second = ip.run_line_magic("mvc_commit", "model")
    merged = ip.run_line_magic("mvc_merge", f"{first.short_id} --model model {second.short_id}")
    assert set(merged.parents) == {first.id, second.id}


# -- export, CLI, diff, demo ---------------------------------------------------------------------


def test_export_reports_the_version_id_and_leaks_no_temporary_name(ip, capsys, caplog):
    keras = pytest.importorskip("keras", reason="export needs Keras")
    ip.user_ns["model"] = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    version = ip.run_line_magic("mvc_commit", "model --tag production")
    capsys.readouterr()
    caplog.set_level(logging.INFO)
    ip.run_line_magic("mvc_export", "production exported --format savedmodel")
    ip.run_line_magic("mvc_export", "production exported.keras")
    out = capsys.readouterr()
    assert version.short_id in out.out
    logged = " ".join(r.getMessage() for r in caplog.records) + out.out + out.err
    assert ".tmp-export" not in logged


def test_cli_accepts_store_after_the_subcommand(tmp_path):
    with Repo(tmp_path / "elsewhere") as repo:
        repo.commit({"k": np.ones(2, np.float32)}, "m", message="hello")
    result = mvc("log", "--store", str(tmp_path / "elsewhere"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "hello" in result.stdout


def test_diff_of_a_one_layer_change_lists_that_layer_and_counts_the_rest(repo):
    weights = {f"layer{i:02d}/kernel": np.full((2, 2), i, np.float32) for i in range(40)}
    a = repo.commit(weights, "model")
    weights["layer07/kernel"] = weights["layer07/kernel"] + 1
    b = repo.commit(weights, "model")
    text = str(repo.diff(a.id, b.id))
    assert "layer07" in text and "layer08" not in text
    assert "39 unchanged layers not shown" in text


def test_the_notebook_runner_keeps_the_kernels_own_stderr_out_of_the_terminal(tmp_path, capfd):
    from mvc_magics.apps.notebook_runner import KERNEL_LOG, run_notebook

    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell("import os; os.write(2, b'kernel-start-up-noise\\n'); 1 + 1")]
    source = tmp_path / "tiny.ipynb"
    nbformat.write(notebook, source)
    run_notebook(source, tmp_path / "out", timeout=120)
    captured = capfd.readouterr()
    assert "kernel-start-up-noise" not in captured.out + captured.err
    assert "kernel-start-up-noise" in (tmp_path / "out" / KERNEL_LOG).read_text()
