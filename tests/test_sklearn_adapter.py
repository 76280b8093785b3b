"""scikit-learn estimators and pipelines through the API and the magics, without pickle: fitted
arrays as tensors, rebuild through the allow-list, identical predictions, merge only where it means
something, VotingClassifier/VotingRegressor ensembles, and a .skops export re-loaded by skops."""

from __future__ import annotations

import numpy as np
import pytest
from IPython.core.error import UsageError

from mvc_magics.errors import MergeConflictError, ShapeMismatchError, UnsupportedModelError

pytest.importorskip("sklearn", reason="scikit-learn is not installed")
skops_io = pytest.importorskip("skops.io", reason="skops is not installed")

from sklearn.base import BaseEstimator, TransformerMixin  # noqa: E402
from sklearn.datasets import load_iris  # noqa: E402
from sklearn.ensemble import RandomForestClassifier  # noqa: E402
from sklearn.linear_model import LogisticRegression, Ridge  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

X, Y = load_iris(return_X_y=True)


def pipeline(c: float = 1.0, rows: slice = slice(None)):
    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=500)).fit(X[rows], Y[rows])


class Doubler(TransformerMixin, BaseEstimator):
    """A transformer defined outside scikit-learn: not on the trusted list."""

    def fit(self, x, y=None):
        self.scale_ = np.full(x.shape[1], 2.0)
        return self

    def transform(self, x):
        return x * self.scale_


def test_pipeline_round_trip_in_place_and_rebuilt(repo):
    pipe = pipeline()
    expected = pipe.predict_proba(X)
    version = repo.commit(pipe, "clf")
    assert version.framework == "sklearn"
    names = {e.name for e in repo.manifest(version.id)}
    assert {"steps/0/1/mean_", "steps/1/1/coef_", "steps/1/1/intercept_"} <= names
    pipe.fit(X[::3], Y[::3])
    assert not np.array_equal(pipe.predict_proba(X), expected)
    repo.checkout(version.id, pipe)
    np.testing.assert_array_equal(pipe.predict_proba(X), expected)
    rebuilt = repo.checkout(version.id)
    assert rebuilt is not pipe
    np.testing.assert_array_equal(rebuilt.predict_proba(X), expected)


def test_forest_trees_are_tensors_and_predict_identically(repo):
    forest = RandomForestClassifier(n_estimators=4, max_depth=4, random_state=0).fit(X, Y)
    version = repo.commit(forest, "forest")
    names = {e.name for e in repo.manifest(version.id)}
    assert "estimators_/0/tree_/nodes/threshold" in names and "estimators_/3/tree_/values" in names
    rebuilt = repo.checkout(version.id)
    np.testing.assert_array_equal(rebuilt.predict_proba(X), forest.predict_proba(X))


def test_status_unchanged_recommit_and_dedupe_of_an_unchanged_step(repo):
    pipe = pipeline()
    first = repo.commit(pipe, "clf")
    assert not repo.is_modified(pipe, first)
    assert not repo.commit(pipe, "clf").stats.new_version
    pipe.set_params(logisticregression__C=0.1)
    pipe[-1].fit(pipe[0].transform(X), Y)  # a new final step on the same scaler
    assert repo.is_modified(pipe, first)
    second = repo.commit(pipe, "clf")
    assert second.stats.tensors_reused >= 4  # the scaler's n_samples_seen_, mean_, var_, scale_


def test_average_of_linear_models_and_refusal_elsewhere(repo):
    models = [LogisticRegression(max_iter=500).fit(X[i::2], Y[i::2]) for i in range(2)]
    ids = [repo.commit(m, "lr").id for m in models]
    merged = repo.checkout(repo.merge(ids, name="lr").id)
    np.testing.assert_allclose(merged.coef_, (models[0].coef_ + models[1].coef_) / 2, rtol=0, atol=1e-12)
    greedy = repo.merge(ids, method="greedy", eval_fn=lambda m: m.score(X, Y), name="lr")
    assert greedy.report.score >= max(m.score(X, Y) for m in models)  # a greedy soup never scores worse
    forests = [RandomForestClassifier(n_estimators=2, random_state=s).fit(X, Y) for s in range(2)]
    fids = [repo.commit(f, "forest").id for f in forests]
    with pytest.raises(MergeConflictError, match=r"only for linear models.*RandomForestClassifier"):
        repo.merge(fids, name="forest")


def test_voting_ensembles_from_versions(repo):
    members = [pipeline(c) for c in (0.1, 10.0)]
    ids = [repo.commit(m, "clf").id for m in members]
    result = repo.merge(ids, method="ensemble", name="clf")
    assert result.stats.tensors_written == 0
    voter = repo.checkout(result.id)
    assert type(voter).__name__ == "VotingClassifier" and voter.voting == "soft"
    mean = (members[0].predict_proba(X) + members[1].predict_proba(X)) / 2
    np.testing.assert_allclose(voter.predict_proba(X), mean, rtol=0, atol=1e-12)
    hard = repo.checkout(repo.merge(ids, method="vote", name="clf").id)
    assert hard.voting == "hard" and hard.predict(X).shape == Y.shape
    ridges = [Ridge(alpha=a).fit(X, Y.astype(float)) for a in (0.1, 5.0)]
    rids = [repo.commit(r, "ridge").id for r in ridges]
    regressor = repo.checkout(repo.merge(rids, method="ensemble", name="ridge").id)
    np.testing.assert_allclose(regressor.predict(X), (ridges[0].predict(X) + ridges[1].predict(X)) / 2)


def test_export_reloads_with_skops(repo, tmp_path):
    pipe = pipeline()
    version = repo.commit(pipe, "clf")
    path = repo.export(version.id, tmp_path / "clf.skops", format="skops")
    loaded = skops_io.load(path, trusted=skops_io.get_untrusted_types(file=path))
    np.testing.assert_array_equal(loaded.predict_proba(X), pipe.predict_proba(X))


def test_bad_input_leaves_the_estimator_untouched(repo):
    version = repo.commit(pipeline(), "clf")
    forest = RandomForestClassifier(n_estimators=2, random_state=0).fit(X, Y)
    before = forest.predict_proba(X)
    with pytest.raises(ShapeMismatchError, match="left unchanged"):
        repo.checkout(version.id, forest)
    np.testing.assert_array_equal(forest.predict_proba(X), before)
    with pytest.raises(UnsupportedModelError, match="not fitted yet"):
        repo.commit(LogisticRegression(), "unfitted")
    custom = make_pipeline(Doubler(), LogisticRegression(max_iter=500)).fit(X, Y)
    custom_version = repo.commit(custom, "custom")
    with pytest.raises(UnsupportedModelError, match="not on the trusted list"):
        repo.checkout(custom_version.id)
    np.testing.assert_array_equal(repo.checkout(custom_version.id, unsafe=True).predict(X), custom.predict(X))


def test_magics_in_a_real_shell(ip, capsys):
    ip.user_ns["clf"] = clf = pipeline()
    expected = clf.predict_proba(X)
    first = ip.run_line_magic("mvc_commit", "clf -m baseline --metric acc=0.97")
    clf.fit(X[::2], Y[::2])
    assert ip.run_line_magic("mvc_status", "")[0].changed
    ip.run_line_magic("mvc_commit", "clf -m half")
    ip.run_line_magic("mvc_checkout", f"{first.short_id} clf")
    assert ip.user_ns["clf"] is clf
    np.testing.assert_array_equal(clf.predict_proba(X), expected)
    ip.run_line_magic("mvc_checkout", "latest --as other")
    assert ip.user_ns["other"] is not clf
    assert "sklearn" in ip.run_line_magic("mvc_log", "clf").table().rows[0]
    ip.run_line_magic("mvc_merge", f"{first.short_id} latest --model clf --method ensemble --name voters")
    ip.run_line_magic("mvc_checkout", "latest --model voters --as voters")
    assert type(ip.user_ns["voters"]).__name__ == "VotingClassifier"
    ip.user_ns["loose"] = LogisticRegression()
    with pytest.raises(UsageError, match="not fitted yet") as error:
        ip.run_line_magic("mvc_commit", "loose")
    assert "\n" not in str(error.value)
