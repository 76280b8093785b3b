"""%mvc_autocommit through a real shell, hook registration/removal, %lsmagic, output modes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from IPython.core.error import UsageError

from mvc_magics.magics import session_of
from mvc_magics.magics.automation import AutomationMagics
from mvc_magics.magics.output import in_kernel, output_mode


def ours(shell, event):
    """Callbacks of ``event`` that belong to mvc_magics."""
    return [cb for cb in shell.events.callbacks[event]
            if getattr(getattr(cb, "__self__", None), "__module__", "").startswith("mvc_magics")]


def our_matchers(shell):
    return [m for m in shell.Completer.custom_matchers if m.__module__.startswith("mvc_magics")]


def versions_of(shell, name):
    return session_of(shell).repo.log(name)


def run(shell, source):
    result = shell.run_cell(source)
    assert result.success, result.error_in_exec or result.error_before_exec
    return result


def test_autocommit_one_version_per_changing_cell_and_none_otherwise(ip, weights):
    ip.user_ns["w"] = weights
    run(ip, "%mvc_autocommit w on")
    assert len(versions_of(ip, "w")) == 1  # the starting weights
    run(ip, "w['dense/bias'] = w['dense/bias'] + 1.0  # step one\nsecond_line = 1")
    run(ip, "unrelated = 41 + 1")
    run(ip, "print(w['dense/kernel'].sum())")
    run(ip, "w['out/kernel'] = w['out/kernel'] * 0.5")
    run(ip, "w['out/kernel'] = w['out/kernel'] * 1.0  # same values: no change")
    log = versions_of(ip, "w")
    assert [v.message for v in log] == [
        "w['out/kernel'] = w['out/kernel'] * 0.5",
        "w['dense/bias'] = w['dense/bias'] + 1.0  # step one",
        "autocommit started",
    ]
    assert log[0].is_head
    np.testing.assert_array_equal(session_of(ip).repo.load_state(log[0])["out/kernel"], ip.user_ns["w"]["out/kernel"])


def test_autocommit_off_stops_and_listing_shows_state(ip, weights, capsys):
    ip.user_ns["w"] = weights
    run(ip, "%mvc_autocommit w")  # on is the default
    listing = ip.run_line_magic("mvc_autocommit", "")
    assert [row[:2] for row in listing] == [("w", "on")]
    run(ip, "%mvc_autocommit w off")
    run(ip, "w['step'] = w['step'] + 1")
    assert len(versions_of(ip, "w")) == 1
    assert [row[:2] for row in ip.run_line_magic("mvc_autocommit", "")] == [("w", "off")]
    assert "w" in str(listing)


def test_autocommit_captures_fit_metrics_of_a_keras_model(ip):
    tests = str(Path(__file__).parent)
    run(ip, f"import sys; sys.path.insert(0, {tests!r})\nimport keras_models as km\nmodel = km.linear_regression()")
    run(ip, "%mvc_autocommit model on")
    run(ip, "km.train_reference(model, 3)  # three epochs")
    run(ip, "prediction = model.predict(km.REFERENCE_X, verbose=0)")  # inference leaves weights alone
    log = versions_of(ip, "model")
    assert len(log) == 2
    assert log[0].message == "km.train_reference(model, 3)  # three epochs"
    history = ip.user_ns["model"].history.history
    assert log[0].metrics["val_mse"] == pytest.approx(history["val_mse"][-1])
    assert "km.train_reference(model, 3)" in log[0].provenance["cells"][-1]["source"]


def test_autocommit_of_a_failing_cell_notes_the_failure(ip, weights):
    ip.user_ns["w"] = weights
    run(ip, "%mvc_autocommit w")
    result = ip.run_cell("w['step'] = w['step'] + 5\nraise KeyboardInterrupt")
    assert not result.success
    head = versions_of(ip, "w")[0]
    assert head.message == "w['step'] = w['step'] + 5 [cell failed: KeyboardInterrupt]"
    assert head.provenance["cells"][-1]["failed"] is True


def test_autocommit_errors_are_one_line_and_leave_the_store_alone(ip, weights):
    with pytest.raises(UsageError, match="no variable named 'nothing'"):
        ip.run_line_magic("mvc_autocommit", "nothing on")
    ip.user_ns["text"] = "not a model"
    with pytest.raises(UsageError, match="cannot version a str"):
        ip.run_line_magic("mvc_autocommit", "text on")
    assert session_of(ip).repo.index.count() == 0


def test_autocommit_skips_a_variable_that_stopped_being_a_model(ip, weights, capsys):
    ip.user_ns["w"] = weights
    run(ip, "%mvc_autocommit w")
    run(ip, "w = 'replaced'")
    run(ip, "del w")
    assert len(versions_of(ip, "w")) == 1
    assert "failed" not in capsys.readouterr().err


def test_unload_removes_every_hook_and_reload_does_not_double_them(ip):
    assert len(ours(ip, "post_run_cell")) == 1 and len(ours(ip, "pre_run_cell")) == 1
    assert len(our_matchers(ip)) == 1
    ip.run_line_magic("reload_ext", "mvc_magics")
    ip.run_line_magic("load_ext", "mvc_magics")  # a second load is a no-op
    assert len(ours(ip, "post_run_cell")) == 1 and len(ours(ip, "pre_run_cell")) == 1
    assert len(our_matchers(ip)) == 1
    ip.run_line_magic("unload_ext", "mvc_magics")
    try:
        assert ours(ip, "post_run_cell") == [] and ours(ip, "pre_run_cell") == []
        assert our_matchers(ip) == []
        assert "mvc_autocommit" not in ip.magics_manager.magics["line"]
        from mvc_magics.core.provenance import current_context

        assert current_context() is None
    finally:
        ip.run_line_magic("load_ext", "mvc_magics")  # the fixture unloads at the end


def test_autocommit_stops_after_unload(ip, weights):
    ip.user_ns["w"] = weights
    run(ip, "%mvc_autocommit w")
    repo_path = session_of(ip).repo.path
    ip.run_line_magic("unload_ext", "mvc_magics")
    try:
        run(ip, "w['step'] = w['step'] + 1")
    finally:
        ip.run_line_magic("load_ext", "mvc_magics")
    ip.run_line_magic("mvc_init", str(repo_path))
    assert len(versions_of(ip, "w")) == 1


def test_lsmagic_lists_the_magics(ip):
    listing = str(ip.run_line_magic("lsmagic", ""))
    for name in ("mvc_init", "mvc_commit", "mvc_checkout", "mvc_log", "mvc_tag", "mvc_status",
                 "mvc_autocommit", "mvc_show"):
        assert f"%{name}" in listing


def test_output_option_and_terminal_default(ip):
    assert not in_kernel(ip)
    assert output_mode(ip) == "text"  # a plain/terminal shell: no widgets, no HTML
    ip.run_line_magic("config", 'MVCMagics.output = "html"')
    assert output_mode(ip) == "html"
    ip.run_line_magic("config", 'MVCMagics.output = "widget"')
    assert output_mode(ip) == "widget"
    from traitlets import TraitError

    with pytest.raises(TraitError):
        ip.magics_manager.registry["MVCMagics"].output = "pdf"
    ip.run_line_magic("config", 'MVCMagics.output = "auto"')

    class FakeKernelShell:
        kernel = object()

    assert output_mode(FakeKernelShell(), "auto") == "widget"
    assert output_mode(FakeKernelShell(), "text") == "text"


def test_automation_magics_are_registered_through_magic_classes():
    from mvc_magics.magics import MAGIC_CLASSES

    assert AutomationMagics in MAGIC_CLASSES


def test_autocommit_with_data_fingerprints_each_commit(ip, weights):
    ip.user_ns.update(w=weights, x_train=np.arange(8.0).reshape(4, 2))
    with pytest.raises(UsageError, match="no variable named 'y_train'"):
        ip.run_line_magic("mvc_autocommit", "w --data x_train y_train")
    assert "w" not in [row[0] for row in ip.run_line_magic("mvc_autocommit", "") if row[1] == "on"]
    run(ip, "%mvc_autocommit w on --data x_train")
    run(ip, "x_train = x_train * 2\nw['step'] = w['step'] + 1")
    log = versions_of(ip, "w")
    assert len(log) == 2
    from mvc_magics.core.provenance import fingerprint

    assert log[0].provenance["data"]["x_train"] == fingerprint(ip.user_ns["x_train"])
    assert log[1].provenance["data"]["x_train"]["hash"] != log[0].provenance["data"]["x_train"]["hash"]
    assert [row[3] for row in ip.run_line_magic("mvc_autocommit", "")] == ["x_train"]


def test_unload_inside_a_cell_commits_nothing_and_leaves_no_store_open(ip, weights):
    ip.user_ns["w"] = weights
    run(ip, "%mvc_autocommit w")
    session = session_of(ip)
    try:
        run(ip, "w['step'] = w['step'] + 1\n%unload_ext mvc_magics")
        assert session._repo is None  # no hook of ours ran after the unload to reopen it
    finally:
        ip.run_line_magic("load_ext", "mvc_magics")
    assert len(versions_of(ip, "w")) == 1
