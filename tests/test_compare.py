"""repo.compare(): the metrics table, D as defined, normalized D, scores, ranking and bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from compare_data import HAND_TABLE, HAND_WEIGHTS, commit_table, model, store_files

from mvc_magics.core.compare import Comparison, compare_versions, weighted_difference
from mvc_magics.errors import CompareError, MVCError, UnknownRefError


@pytest.fixture
def hand(repo):
    return commit_table(repo, HAND_TABLE)


def test_raw_d_equals_the_hand_computed_sum(repo, hand):
    cmp = repo.compare([hand[k].id for k in "ABC"], weights=HAND_WEIGHTS)
    # D(A,B) = 2*|0.90-0.80| + 1*|0.30-0.20| + 0.5*|50-10| = 0.2 + 0.1 + 20
    assert cmp.D(hand["A"], hand["B"]) == pytest.approx(20.3)
    # C has no loss: that term is left out, never taken as 0 -> 2*0.05 + 0.5*20
    assert cmp.D(hand["A"], hand["C"]) == pytest.approx(10.1)
    assert cmp.D(hand["B"], hand["C"]) == pytest.approx(2 * 0.05 + 0.5 * 20)
    assert cmp.D(hand["A"], hand["A"]) == 0
    assert cmp.D(hand["B"], hand["A"]) == cmp.D(hand["A"], hand["B"])
    assert any("no loss" in note for note in cmp.notes)


def test_normalized_d_scales_each_metric_by_its_range(repo, hand):
    cmp = repo.compare([hand[k].id for k in "ABC"], weights=HAND_WEIGHTS)
    # ranges: acc 0.1, loss 0.1, lat_ms 40
    assert cmp.D(hand["A"], hand["B"], normalized=True) == pytest.approx(2 * 1 + 1 * 1 + 0.5 * 1)
    assert cmp.D(hand["A"], hand["C"], normalized=True) == pytest.approx(2 * 0.5 + 0.5 * 0.5)
    assert cmp.to_dict()["metrics"][0] == {"name": "acc", "direction": "max", "weight": 2.0,
                                           "min": 0.80, "max": 0.90}


def test_scores_and_ranking_are_direction_aware(repo, hand):
    cmp = repo.compare([hand[k].id for k in "ABC"], weights=HAND_WEIGHTS)
    assert cmp.directions == {"acc": "max", "loss": "min", "lat_ms": "min"}  # inferred from the names
    assert cmp.score(hand["A"]) == pytest.approx((2 * 1 + 1 * 0 + 0.5 * 0) / 3.5)
    assert cmp.score(hand["B"]) == pytest.approx((2 * 0 + 1 * 1 + 0.5 * 1) / 3.5)
    assert cmp.score(hand["C"]) == pytest.approx((2 * 0.5 + 0.5 * 0.5) / 2.5)  # its own metrics only
    # C misses a weighted metric: ranked after the complete versions even though 0.5 > 0.43
    assert [v.message for v in cmp.ranking] == ["A", "B", "C"]
    assert cmp.best.id == hand["A"].id and cmp.rank(hand["C"]) == 3
    assert all(0 <= cmp.score(v) <= 1 for v in cmp.versions)
    flipped = repo.compare([hand[k].id for k in "ABC"], weights=HAND_WEIGHTS, directions={"acc": "min"})
    assert flipped.directions["acc"] == "min"
    assert flipped.score(hand["B"]) == pytest.approx((2 * 1 + 1 * 1 + 0.5 * 1) / 3.5)
    assert flipped.best.id == hand["B"].id


def test_changing_weights_flips_the_best_version(repo):
    versions = commit_table(repo, {"accurate": {"accuracy": 0.95, "latency": 120.0},
                                   "fast": {"accuracy": 0.90, "latency": 15.0}})
    accuracy_first = repo.compare(name="model", weights={"accuracy": 1.0, "latency": 0.1})
    latency_first = repo.compare(name="model", weights={"accuracy": 0.1, "latency": 1.0})
    assert accuracy_first.best.id == versions["accurate"].id
    assert latency_first.best.id == versions["fast"].id
    assert latency_first.directions == {"accuracy": "max", "latency": "min"}
    # the same flip without touching the store
    assert accuracy_first.reweighted({"accuracy": 0.1, "latency": 1.0}).best.id == versions["fast"].id
    # raw D is as defined: 0.1*|0.95-0.90| + 1*|120-15|
    assert latency_first.D(versions["accurate"], versions["fast"]) == pytest.approx(0.005 + 105)


def test_reference_regression_ranks_lowest_val_mse_best(repo):
    from keras_models import linear_regression, train_reference

    net = linear_regression()
    committed = []
    for epochs in (10, 40, 50):  # 10, 50 and 100 epochs in total
        train_reference(net, epochs)
        committed.append(repo.commit(net, "model", message=f"+{epochs} epochs"))
    val_mse = {v.id: v.metrics["val_mse"] for v in committed}
    assert len(set(val_mse.values())) == 3
    cmp = repo.compare(name="model", weights={"val_mse": 1})
    assert cmp.best.id == min(val_mse, key=val_mse.get) == committed[-1].id
    assert [v.id for v in cmp.ranking] == sorted(val_mse, key=val_mse.get)
    assert cmp.best.id == repo.resolve("best:val_mse", name="model").id
    assert cmp.baseline.id == committed[0].id  # default baseline: the oldest
    assert cmp.vs_baseline()[committed[-1].id] == pytest.approx(abs(val_mse[committed[-1].id]
                                                                    - val_mse[committed[0].id]))
    # every captured metric (loss, mse, val_loss, val_mse) is lower-is-better
    assert set(cmp.directions.values()) == {"min"}
    assert repo.compare(name="model").best.id == committed[-1].id


def test_missing_and_nan_metrics(repo):
    versions = commit_table(repo, {
        "diverged": {"val_loss": float("nan"), "acc": 0.99},
        "good": {"val_loss": 0.2, "acc": 0.9},
        "worse": {"val_loss": 0.5, "acc": 0.8},
        "untested": {},
    })
    cmp = repo.compare(name="model")
    assert cmp.best.id == versions["good"].id
    assert cmp.rank(versions["diverged"]) is None and math.isnan(cmp.score(versions["diverged"]))
    assert cmp.rank(versions["untested"]) is None
    assert cmp.value(versions["untested"], "acc") is None
    assert math.isnan(cmp.value(versions["diverged"], "val_loss"))
    text = str(cmp)
    assert "not ranked: val_loss is nan" in text and "none of the weighted metrics" in text
    # NaN is never best, even when it is the only metric that is weighted
    only = repo.compare([versions["diverged"].id, versions["good"].id], weights={"val_loss": 1})
    assert only.best.id == versions["good"].id
    row = {r["id"]: r for r in cmp.to_dict()["versions"]}[versions["untested"].id]
    assert row["metrics"] == {"val_loss": None, "acc": None} and row["score"] is None


def test_no_rankable_version_has_no_best(repo):
    commit_table(repo, {"a": {"loss": float("nan")}, "b": {"loss": float("inf")}})
    cmp = repo.compare(name="model")
    assert cmp.best is None and cmp.ranking == []
    assert "best: none" in str(cmp)
    assert math.isnan(weighted_difference({"loss": math.nan}, {"loss": 1.0}, {"loss": 1.0}))


def test_renderings_and_exports(repo, hand):
    cmp = repo.compare([hand[k].id for k in "ABC"], weights=HAND_WEIGHTS, baseline=hand["B"].id)
    text = str(cmp)
    lines = text.splitlines()
    best_line = next(line for line in lines if line.startswith("*"))
    assert hand["A"].short_id in best_line and f"{hand['B'].short_id} (base)" in text
    assert "acc ↑ w=2" in text and "loss ↓ w=1" in text and "—" in text  # C's missing loss
    page = cmp._repr_html_()
    bold_rows = [row for row in page.split("<tr")[1:] if "font-weight:bold" in row]
    assert len(bold_rows) == 1 and hand["A"].short_id in bold_rows[0]  # only the best row is highlighted
    assert "D vs base" in page and "pairwise D" in page
    frame = cmp.to_pandas()
    assert list(frame.index) == [hand["A"].short_id, hand["B"].short_id, hand["C"].short_id]
    assert frame.loc[hand["A"].short_id, "D_vs_baseline"] == pytest.approx(20.3)
    assert math.isnan(frame.loc[hand["C"].short_id, "loss"])
    assert cmp.distance_frame().loc[hand["A"].short_id, hand["C"].short_id] == pytest.approx(10.1)
    data = json.loads(json.dumps(cmp.to_dict()))
    assert data["best"] == hand["A"].id and data["baseline"] == hand["B"].id
    assert data["ranking"] == [hand[k].id for k in "ABC"]
    assert repr(cmp).startswith("<Comparison of 3 versions of model: best")


def test_ties_go_to_the_newer_version_with_a_note(repo):
    versions = commit_table(repo, {"old": {"acc": 0.9, "latency": 100.0}, "new": {"acc": 0.8, "latency": 20.0}})
    cmp = repo.compare(name="model")  # each is best on one metric of equal weight: 0.5 each
    assert cmp.score(versions["old"]) == cmp.score(versions["new"]) == 0.5
    assert cmp.best.id == versions["new"].id
    assert any("tie on score" in note for note in cmp.notes)


def test_limit_and_default_order(repo):
    for i in range(5):
        repo.commit(model(i), "model", message=f"v{i}", metrics={"acc": 0.5 + i / 10})
    cmp = repo.compare(name="model", limit=3)
    assert [v.message for v in cmp.versions] == ["v2", "v3", "v4"]  # most recent, oldest first
    assert any("3 most recent of 5" in note for note in cmp.notes)
    assert len(repo.compare(name="model", limit=None).versions) == 5


def test_baseline_outside_the_refs_is_added(repo, hand):
    cmp = repo.compare([hand["B"].id], baseline=hand["A"].id)
    assert {v.id for v in cmp.versions} == {hand["A"].id, hand["B"].id}
    assert cmp.baseline.id == hand["A"].id


def test_versions_of_different_models_need_allow_mixed(repo):
    a = repo.commit(model(1), "first", metrics={"acc": 0.5})
    b = repo.commit(model(2), "second", metrics={"acc": 0.7})
    with pytest.raises(CompareError, match="different models"):
        repo.compare([a.id, b.id])
    assert repo.compare([a.id, b.id], allow_mixed=True).best.id == b.id
    with pytest.raises(CompareError, match="several models"):
        repo.compare()


@pytest.mark.parametrize("call, message", [
    (lambda r: r.compare(["nosuchtag", "A"]), "nosuchtag"),
    (lambda r: r.compare(["A"]), "at least two versions"),
    (lambda r: r.compare(["A", "A"]), "comparing a version with itself"),
    (lambda r: r.compare(["A", "latest~2"]), "comparing a version with itself"),
    (lambda r: r.compare(["A"], baseline="A"), "at least two versions"),
    (lambda r: r.compare(weights={"f1": 1}), "no compared version has metric 'f1'"),
    (lambda r: r.compare(weights={"acc": -1}), "is negative"),
    (lambda r: r.compare(weights={"acc": "high"}), "is not a number"),
    (lambda r: r.compare(weights={"acc": True}), "is not a number"),
    (lambda r: r.compare(weights={"acc": float("nan")}), "finite"),
    (lambda r: r.compare(weights={"acc": 0, "loss": 0}), "all weights are zero"),
    (lambda r: r.compare(weights=[("acc", 1)]), "must map"),
    (lambda r: r.compare(directions={"acc": "up"}), "'min' or 'max'"),
    (lambda r: r.compare(directions={"f1": "max"}), "no compared version has metric 'f1'"),
    (lambda r: r.compare(baseline="nosuchtag"), "nosuchtag"),
], ids=["unknown-ref", "single", "self", "self-via-ancestry", "self-baseline", "unknown-metric", "negative",
        "non-numeric", "bool", "nan", "all-zero", "not-a-mapping", "bad-direction", "direction-unknown-metric",
        "unknown-baseline"])
def test_bad_input_is_one_clear_error_and_changes_nothing(repo, store_path, call, message):
    versions = commit_table(repo, HAND_TABLE)
    repo.tag(versions["A"].id, "A")
    before = store_files(store_path)
    with pytest.raises(MVCError, match=message) as info:
        call(repo)
    assert "\n" not in str(info.value)
    assert store_files(store_path) == before


def test_unknown_ref_error_is_typed(repo, hand):
    with pytest.raises(UnknownRefError):
        repo.compare(["nope", hand["A"].id])


def test_compare_versions_is_pure_math(repo, hand):
    loaded = [repo.get(hand[k].id) for k in "AB"]
    cmp = compare_versions(loaded, weights={"acc": 1})
    assert isinstance(cmp, Comparison) and cmp.best.id == hand["A"].id
    assert cmp.weights == {"acc": 1.0, "loss": 0.0, "lat_ms": 0.0}
    assert any("weight 0" in note for note in cmp.notes)
    assert np.allclose(cmp.raw, [[0, 0.1], [0.1, 0]])


def test_pairwise_matrix_is_built_only_on_request_and_agrees_with_D():
    """Comparing many versions stays linear: the n x n D matrices exist only when asked for."""
    import datetime as dt
    import math as _math

    from mvc_magics.core.compare import compare_versions
    from mvc_magics.core.version import Version

    rng = np.random.default_rng(3)
    versions = []
    for i in range(300):
        metrics = {"val_loss": float(rng.random()), "acc": float(rng.random())}
        if i % 7 == 0:
            del metrics["acc"]  # missing: left out of D
        if i % 11 == 0:
            metrics["val_loss"] = _math.nan  # not finite: left out of D
        vid = f"{i:064x}"
        versions.append(Version(vid, "m", (), f"v{i}", dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
                                + dt.timedelta(seconds=i), "a@b", metrics, {}, short_id=vid[-8:]))
    cmp = compare_versions(versions, weights={"val_loss": 2.0, "acc": 1.0})
    str(cmp), cmp.to_pandas(), cmp.vs_baseline()
    assert "_raw" not in cmp.__dict__ and "_normalized" not in cmp.__dict__
    raw, normalized = cmp.raw, cmp.normalized
    for a, b in [(0, 1), (7, 11), (11, 11), (5, 299), (14, 22)]:
        for matrix, norm in ((raw, False), (normalized, True)):
            expected = cmp.D(versions[a], versions[b], normalized=norm)
            assert (_math.isnan(expected) and _math.isnan(matrix[a, b])) or matrix[a, b] == pytest.approx(expected)
    assert "pairwise D not shown" in cmp._repr_html_()
