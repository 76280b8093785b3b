"""Issue 13 §2: metrics are facts of the version they were measured on; a merge never changes its inputs."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from mvc_magics import Repo
from tests.keras_models import linear_regression, train_reference


def shifted(weights, delta):
    """Other float weights, the same integer counters (so the versions can be averaged)."""
    return {k: v + delta if v.dtype.kind == "f" else v for k, v in weights.items()}


def test_a_fit_after_the_commit_does_not_rewrite_the_metrics_of_the_version_checked_out(repo):
    model = linear_regression()
    train_reference(model, 3)
    v1 = repo.commit(model, "model")
    before = dict(v1.metrics)
    assert "val_loss" in before
    # A diverging fit, not committed; then back to v1 and commit: v1's metrics stay what they were.
    model.optimizer.learning_rate.assign(50.0)
    train_reference(model, 2)
    repo.checkout(v1.id, model)
    again = repo.commit(model, "model")
    assert again.id == v1.id and not again.stats.new_version
    assert repo.get(v1.id).metrics == before
    # Even with the index rebuilt from the files.
    repo.reindex()
    assert repo.get(v1.id).metrics == before


def test_fit_metrics_never_attach_to_content_that_is_already_stored(repo):
    model = linear_regression()
    v0 = repo.commit(model, "model")  # no metrics
    weights = model.get_weights()
    train_reference(model, 2)
    model.set_weights(weights)  # an assignment after the fit: the fit's metrics describe other weights
    again = repo.commit(model, "model")
    assert again.id == v0.id
    assert repo.get(v0.id).metrics == {}
    assert any("fit metrics not attached" in note for note in again.stats.notes)


def test_a_new_metric_is_added_with_when_and_where_and_an_existing_value_is_never_replaced(repo, weights):
    v = repo.commit(weights, "model", metrics={"acc": 0.9})
    again = repo.commit(weights, "model", metrics={"acc": 0.1, "f1": 0.5})
    assert repo.get(v.id).metrics == {"acc": 0.9, "f1": 0.5}
    assert any("acc=0.9 (given 0.1)" in note for note in again.stats.notes)
    notes = list(repo.layout.read_notes())
    assert [n["metrics"] for _, n in notes] == [{"f1": 0.5}]
    assert notes[0][1]["measured"]["created"] and notes[0][1]["measured"]["author"]
    repo.reindex()
    assert repo.get(v.id).metrics == {"acc": 0.9, "f1": 0.5}


def test_message_params_and_data_on_a_recommit_are_reported_as_not_recorded(ip, tmp_path, capsys):
    ip.user_ns["w"] = {"a": np.ones(3, np.float32)}
    ip.user_ns["x"] = np.arange(4.0)
    ip.run_line_magic("mvc_commit", "w -m first")
    capsys.readouterr()
    ip.run_line_magic("mvc_commit", "w -m second --param lr=0.1 --data x")
    text = capsys.readouterr().out
    assert "message, params, data fingerprints not recorded" in text
    repo = Repo(tmp_path / ".mvc")
    (version,) = repo.log("w")
    assert version.message == "first" and version.params == {}
    repo.close()


def test_a_greedy_merge_equal_to_an_input_writes_nothing_on_that_input(repo, weights):
    a = repo.commit(weights, "model", metrics={"acc": 0.5})
    other = shifted(weights, 1)
    b = repo.commit(other, "model", metrics={"acc": 0.4})
    head_before = repo.head("model").id

    def val_score(model):  # prefers the first input alone: the soup of both scores lower
        return -float(np.abs(model["dense/bias"]).sum())

    merged = repo.merge([a.id, b.id], method="greedy", eval_fn=val_score, name="model")
    assert merged.id == a.id  # the greedy soup is the first input itself
    assert repo.get(a.id).metrics == {"acc": 0.5}
    assert list(repo.layout.read_notes()) == []
    assert repo.head("model").id == head_before  # no --into: HEAD stays


def test_a_merge_without_into_does_not_move_head_and_with_into_does(repo, weights):
    a = repo.commit(weights, "model")
    b = repo.commit(shifted(weights, 1), "model")
    merged = repo.merge([a.id, b.id], name="model")
    assert repo.head("model").id == b.id
    live = {k: v.copy() for k, v in weights.items()}
    again = repo.merge([a.id, b.id], weights=[2, 1], name="model", into=live)
    assert merged.id != again.id and repo.head("model").id == again.id


def test_the_merge_score_is_higher_is_better_whatever_the_eval_function_is_called(repo, weights):
    a = repo.commit(weights, "model")
    b = repo.commit(shifted(weights, 1), "model")

    def neg_mse(model):
        return -float(np.square(model["dense/bias"]).mean())

    first = repo.merge([a.id, b.id], weights=[1, 3], eval_fn=neg_mse, name="model")
    second = repo.merge([a.id, b.id], weights=[3, 1], eval_fn=neg_mse, name="model")
    comparison = repo.compare([first.id, second.id], name="model")
    assert comparison.directions["neg_mse"] == "max"
    assert comparison.best.id == max((first, second), key=lambda v: v.metrics["neg_mse"]).id
    assert repo.resolve("best:neg_mse", name="model").id == comparison.best.id  # the ref grammar agrees
    assert repo.resolve("best:neg_mse:min", name="model").id != comparison.best.id  # explicit still wins


def test_an_inf_metric_compares_without_a_runtime_warning(repo, weights):
    repo.commit(weights, "model", metrics={"loss": float("inf")})
    repo.commit(shifted(weights, 1), "model", metrics={"loss": 0.5})
    repo.commit(shifted(weights, 2), "model", metrics={"loss": float("inf")})
    repo.commit(shifted(weights, 3), "model", metrics={"loss": 0.25})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        comparison = repo.compare(name="model")
        text = str(comparison) + str(comparison.to_dict())
    assert "inf" in text


@pytest.mark.parametrize("metric", ["score", "rank"])
def test_a_user_metric_named_like_a_table_column_keeps_its_own_column(repo, weights, metric):
    repo.commit(weights, "model", metrics={metric: 0.25})
    repo.commit(shifted(weights, 1), "model", metrics={metric: 0.75})
    comparison = repo.compare(name="model")
    pytest.importorskip("pandas", reason="to_pandas needs pandas")
    frame = comparison.to_pandas()
    assert sorted(frame[f"metric {metric}"]) == [0.25, 0.75]
    assert set(frame["score"]) == {0.0, 1.0}
    header = comparison.table().header
    assert len(header) == len(set(header))
