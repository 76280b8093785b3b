"""Tab completion of refs, tags, model and data variables for the %mvc_* magics."""

from __future__ import annotations

import numpy as np
import pytest

from mvc_magics.magics import session_of


def complete(shell, line):
    """The last word of ``line`` as each completion IPython offers would make it (cursor at the end)."""
    from IPython.core.completer import provisionalcompleter

    with provisionalcompleter():
        completions = list(shell.Completer.completions(line, len(line)))
    words = [(line[:c.start] + c.text).split()[-1] for c in completions]
    return line.split()[-1] if not line[-1].isspace() else "", list(dict.fromkeys(words))


@pytest.fixture
def history(ip, weights):
    """Three versions of ``w`` with tags and metrics, a second tracked model, data variables."""
    ip.user_ns.update(w=weights, other={"k": np.ones(2, np.float32)}, x_train=np.zeros((3, 2)), n=3)
    ip.run_line_magic("mvc_commit", "w -m one --metric val_loss=0.5 --tag baseline")
    weights["step"] = np.array(4, np.int64)
    ip.run_line_magic("mvc_commit", "w -m two --metric val_loss=0.3 --metric accuracy=0.8 --tag best-yet")
    weights["step"] = np.array(5, np.int64)
    ip.run_line_magic("mvc_commit", "w -m three")
    ip.run_line_magic("mvc_commit", "other --tag other-tag")
    return session_of(ip).repo


def test_refs_complete_with_tags_specials_best_and_ids(ip, history):
    _, matches = complete(ip, "%mvc_checkout ba")
    assert matches == ["baseline"]
    _, matches = complete(ip, "%mvc_checkout --model w b")
    assert "baseline" in matches and "best-yet" in matches
    _, matches = complete(ip, "%mvc_checkout HEAD")
    assert {"HEAD", "HEAD~1"} <= set(matches)
    _, matches = complete(ip, "%mvc_show --model w best:")  # IPython completes after the ':'
    assert matches == ["best:accuracy", "best:val_loss"]
    _, matches = complete(ip, "%mvc_tag best:a")
    assert matches == ["best:accuracy"]
    head = history.head("w")
    _, matches = complete(ip, f"%mvc_show {head.short_id[:5]}")
    assert head.short_id in matches


def test_refs_are_scoped_to_the_model_named_on_the_line(ip, history):
    _, matches = complete(ip, "%mvc_show --model w o")
    assert "other-tag" not in matches
    _, matches = complete(ip, "%mvc_show --model other o")
    assert matches == ["other-tag"]


def test_model_and_data_variables(ip, history):
    _, matches = complete(ip, "%mvc_commit ")
    assert matches == ["other", "w"]  # x_train and n hold no model
    _, matches = complete(ip, "%mvc_commit w --data x")
    assert matches == ["x_train"]
    _, matches = complete(ip, "%mvc_autocommit w o")
    assert matches == ["on", "off"]
    _, matches = complete(ip, "%mvc_checkout baseline ")
    assert "w" in matches and "baseline" not in matches  # second argument: the model variable


def test_flags_of_every_magic(ip, history):
    _, matches = complete(ip, "%mvc_log --gr")
    assert matches == ["--graph"]
    _, matches = complete(ip, "%mvc_show --c")
    assert matches == ["--code"]
    _, matches = complete(ip, "%mvc_commit w --da")
    assert matches == ["--data"]


def test_publish_completes_the_ref_then_the_target(ip, history):
    _, matches = complete(ip, "%mvc_publish ba")
    assert matches == ["baseline"]
    _, matches = complete(ip, "%mvc_publish baseline ")
    assert matches == ["mlflow", "dvc"]
    _, matches = complete(ip, "%mvc_publish baseline mlflow digits --al")
    assert matches == ["--alias"]


def test_completion_works_without_versions_and_never_raises(ip, tmp_path):
    ip.user_ns["w"] = {"a": np.zeros(2)}
    _, matches = complete(ip, "%mvc_commit ")
    assert matches == ["w"]
    _, matches = complete(ip, "%mvc_checkout HE")
    assert "HEAD" not in matches
    assert not (tmp_path / ".mvc").exists()  # completing never creates a store
    _, matches = complete(ip, "%mvc_checkout 'unbalanced")
    assert isinstance(matches, list)


def test_completion_is_gone_after_unload(ip, history):
    ip.run_line_magic("unload_ext", "mvc_magics")
    try:
        _, matches = complete(ip, "%mvc_checkout ba")
        assert "baseline" not in matches
    finally:
        ip.run_line_magic("load_ext", "mvc_magics")
