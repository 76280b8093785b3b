"""LightGBM boosters through their own text model format: trees as tensors, exact predictions."""

from __future__ import annotations

import numpy as np
import pytest
from IPython.core.error import UsageError

from mvc_magics.errors import MergeConflictError, ShapeMismatchError

lgb = pytest.importorskip("lightgbm", reason="LightGBM is not installed")
from sklearn.datasets import load_iris  # noqa: E402

X, Y = load_iris(return_X_y=True)
PARAMS = {"objective": "multiclass", "num_class": 3, "verbose": -1, "num_leaves": 4, "seed": 0}


def train(rounds: int, init=None):
    return lgb.train(PARAMS, lgb.Dataset(X, Y), num_boost_round=rounds, init_model=init, keep_training_booster=True)


def test_round_trip_dedupe_and_in_place_checkout(repo, tmp_path):
    booster = train(3)
    expected = booster.predict(X)
    first = repo.commit(booster, "gbm")
    assert first.framework == "lightgbm" and "tree/0" in {e.name for e in repo.manifest(first.id)}
    longer = train(2, init=booster)
    second = repo.commit(longer, "gbm")
    assert second.stats.tensors_reused >= 9  # the first 3 rounds' 9 trees are stored once
    repo.checkout(first.id, longer)
    np.testing.assert_array_equal(longer.predict(X), expected)
    np.testing.assert_array_equal(repo.checkout(first.id).predict(X), expected)
    path = repo.export(first.id, tmp_path / "gbm.txt", format="lightgbm")
    np.testing.assert_array_equal(lgb.Booster(model_file=str(path)).predict(X), expected)
    with pytest.raises(MergeConflictError, match="cannot be averaged"):
        repo.merge([first.id, second.id], name="gbm")


def test_bad_input_and_magics(ip):
    ip.user_ns["gbm"] = booster = train(2)
    expected = booster.predict(X)
    version = ip.run_line_magic("mvc_commit", "gbm")
    ip.user_ns["gbm"] = train(4)
    ip.run_line_magic("mvc_commit", "gbm")
    ip.run_line_magic("mvc_checkout", f"{version.short_id} gbm")
    np.testing.assert_array_equal(ip.user_ns["gbm"].predict(X), expected)
    assert "lightgbm" in ip.run_line_magic("mvc_log", "gbm").table().rows[0]
    from mvc_magics.adapters.lightgbm import LightGBMAdapter

    live = train(2)
    before = live.model_to_string()
    with pytest.raises(ShapeMismatchError, match="model left unchanged"):
        LightGBMAdapter().load_version(live, {"format": "lightgbm.text/1", "parts": ["header", "tree/9"]},
                                       {"header": np.zeros(3, np.uint8)})
    assert live.model_to_string() == before
    with pytest.raises(UsageError, match="cannot version a Dataset"):
        ip.user_ns["data"] = lgb.Dataset(X, Y)
        ip.run_line_magic("mvc_commit", "data")
