"""%mvc_compare through a real InteractiveShell (the `ip` fixture)."""

from __future__ import annotations

import pytest
from compare_data import model, store_files
from IPython.core.error import UsageError

from mvc_magics.core.compare import Comparison
from mvc_magics.magics import session_of


@pytest.fixture
def shell(ip):
    """Two versions of `model` (accurate vs fast) committed with %mvc_commit."""
    ip.user_ns["model"] = model(0)
    ip.run_line_magic("mvc_commit", "model -m accurate --metric accuracy=0.95 latency=120 --tag baseline")
    ip.user_ns["model"] = {**model(0), "out/kernel": model(0)["out/kernel"] * 2}
    ip.run_line_magic("mvc_commit", "model -m fast --metric accuracy=0.90 latency=15")
    return ip


def test_compare_all_versions_returns_the_comparison(shell, capsys):
    result = shell.run_line_magic("mvc_compare", "--weights accuracy=1,latency=0.1")
    assert isinstance(result, Comparison)
    assert result.best.message == "accurate"
    assert result.weights == {"accuracy": 1.0, "latency": 0.1}
    flipped = shell.run_line_magic("mvc_compare", "--weights accuracy=0.1 --weights latency=1")
    assert flipped.best.message == "fast"
    assert "accuracy ↑ w=0.1" in str(flipped)


def test_refs_baseline_direction_and_limit(shell):
    result = shell.run_line_magic("mvc_compare", "latest baseline --baseline latest --direction latency=max")
    assert [v.message for v in result.versions] == ["fast", "accurate"]
    assert result.baseline.message == "fast" and result.directions["latency"] == "max"
    assert result.best.message == "accurate"
    shell.user_ns["model"] = model(5)
    shell.run_line_magic("mvc_commit", "model -m third --metric accuracy=0.5 latency=5")
    assert len(shell.run_line_magic("mvc_compare", "-n 2").versions) == 2
    assert len(shell.run_line_magic("mvc_compare", "-n 0").versions) == 3


def test_diff_and_plot_are_displayed(shell, capsys):
    result = shell.run_line_magic("mvc_compare", "--weights latency=1 --diff --plot")
    out = capsys.readouterr().out
    assert result.best.message == "fast"
    assert "diff" in out and "out/kernel" in out and "dense/kernel" not in out.split("tensor ")[-1]
    assert out.count("<Figure") == 2  # comparison figure + per-layer diff figure


def test_widget_falls_back_to_the_table_without_a_frontend(shell, capsys):
    result = shell.run_line_magic("mvc_compare", "--widget")
    assert isinstance(result, Comparison)
    assert "needs Jupyter" in capsys.readouterr().out


def test_widget_in_a_kernel_returns_the_panel(shell, monkeypatch):
    pytest.importorskip("ipywidgets")
    from mvc_magics.widgets import ComparePanel

    monkeypatch.setattr(shell, "kernel", object(), raising=False)  # what ipykernel's shell has
    panel = shell.run_line_magic("mvc_compare", "--widget --weights latency=1")
    assert isinstance(panel, ComparePanel) and panel.best.message == "fast"
    shell.user_ns["model"]["dense/bias"] += 1  # check out best restores the variable in place
    panel._checkout.click()
    assert (shell.user_ns["model"]["dense/bias"] == model(0)["dense/bias"]).all()


def test_model_is_needed_when_several_are_tracked(shell):
    shell.user_ns["other"] = model(3)
    shell.run_line_magic("mvc_commit", "other --metric accuracy=0.1")
    shell.user_ns["other"] = model(4)
    shell.run_line_magic("mvc_commit", "other --metric accuracy=0.2")
    with pytest.raises(UsageError, match="several models"):
        shell.run_line_magic("mvc_compare", "")
    assert shell.run_line_magic("mvc_compare", "--model other").best.metrics["accuracy"] == 0.2
    first, second = session_of(shell).repo.log("model")[0], session_of(shell).repo.log("other")[0]
    with pytest.raises(UsageError, match="different models"):
        shell.run_line_magic("mvc_compare", f"{first.short_id} {second.short_id}")
    mixed = shell.run_line_magic("mvc_compare", f"{first.short_id} {second.short_id} --mixed")
    assert {v.name for v in mixed.versions} == {"model", "other"}


@pytest.mark.parametrize("line, message", [
    ("nosuchtag latest", "nosuchtag"),
    ("latest", "at least two versions"),
    ("latest HEAD", "comparing a version with itself"),
    ("--weights f1=1", "no compared version has metric 'f1'"),
    ("--weights accuracy=-2", "is negative"),
    ("--weights accuracy=lots", "is not a number"),
    ("--weights accuracy", "KEY=VALUE"),
    ("--weights accuracy=1,accuracy=2", "given twice"),
    ("--direction latency=sideways", "'min' or 'max'"),
    ("--baseline nosuchtag", "nosuchtag"),
    ("-n -1", "-n must be"),
    ("--model nobody", "'nobody' has no versions to compare \\(models in this store: model\\)"),
])
def test_bad_input_is_a_one_line_usage_error(shell, tmp_path, line, message):
    before = store_files(tmp_path / ".mvc")
    with pytest.raises(UsageError, match=message) as info:
        shell.run_line_magic("mvc_compare", line)
    assert "\n" not in str(info.value)
    assert store_files(tmp_path / ".mvc") == before


def test_loading_imports_no_plotting_table_or_widget_library():
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    code = ("import sys, mvc_magics.magics, mvc_magics.core.compare, mvc_magics.core.diff, mvc_magics.plots, "
            "mvc_magics.widgets; print(sorted(m for m in ('matplotlib', 'pandas', 'ipywidgets', 'tensorflow') "
            "if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})
    assert result.stdout.strip() == "[]"
