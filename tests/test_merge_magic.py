"""%mvc_merge through a real IPython shell, and the merge panel driven programmatically."""

from __future__ import annotations

import numpy as np
import pytest
from IPython.core.error import UsageError

from mvc_magics.magics import session_of


def make_versions(ip, count=3, seed=0):
    rng = np.random.default_rng(seed)
    repo = session_of(ip).repo
    models = []
    for i in range(count):
        model = {"w": rng.standard_normal((3, 2)).astype(np.float32), "b": np.full(2, i, np.float32)}
        ip.user_ns["model"] = model
        ip.run_line_magic("mvc_commit", f"model -m v{i}")
        models.append({k: v.copy() for k, v in model.items()})
    versions = list(reversed(repo.log("model")))
    return repo, versions, models


def test_magic_weighted_average_into_the_live_model(ip, capsys):
    repo, versions, models = make_versions(ip)
    ids = " ".join(v.short_id for v in versions)
    merged = ip.run_line_magic("mvc_merge", f"{ids} --weights 1,1,2 --into model -m 'soup' --tag soup")
    assert merged.message == "soup" and merged.parents == tuple(v.id for v in versions)
    expected = (models[0]["w"].astype(np.float64) + models[1]["w"] + 2 * models[2]["w"]) / 4
    np.testing.assert_allclose(ip.user_ns["model"]["w"], expected.astype(np.float32), rtol=1e-6)
    np.testing.assert_allclose(ip.user_ns["model"]["b"], [1.25, 1.25])
    assert repo.head("model").id == merged.id
    assert repo.resolve("soup", name="model").id == merged.id
    assert merged.provenance["source"] == "%mvc_merge"
    assert not repo.is_modified(ip.user_ns["model"], repo.head("model"))  # %mvc_status: unchanged
    out = capsys.readouterr().out
    assert f"merged {merged.short_id} model: soup" in out and "loaded into model" in out


def test_magic_greedy_with_an_eval_function_from_the_namespace(ip, capsys):
    _, versions, _ = make_versions(ip, seed=1)
    ip.user_ns["closeness"] = lambda m: -float(np.abs(m["b"] - 1.0).sum())  # best: b == 1 (v1)
    merged = ip.run_line_magic("mvc_merge", " ".join(v.id for v in versions) + " --method greedy --eval closeness")
    report = merged.report
    assert report.ingredients[0] == versions[1].id
    assert report.score >= max(s for _, s in report.ranking)
    assert "closeness=" in capsys.readouterr().out


def test_magic_into_a_new_variable_builds_the_result(ip):
    _, versions, _ = make_versions(ip, count=2, seed=2)
    merged = ip.run_line_magic("mvc_merge", f"{versions[0].id} {versions[1].id} --into soup")
    np.testing.assert_allclose(ip.user_ns["soup"]["b"], [0.5, 0.5])
    assert merged.name == "model"


def test_magic_errors_are_one_line_and_change_nothing(ip):
    repo, versions, _ = make_versions(ip, count=2, seed=3)
    live = {k: v.copy() for k, v in ip.user_ns["model"].items()}
    before = repo.index.count()
    ids = f"{versions[0].id} {versions[1].id}"
    for line, match in [
        (versions[0].id, "at least two versions"),
        (f"{ids} --weights 1,2,3", "3 weights for 2 versions"),
        (f"{ids} --weights 1,x", "--weights must be numbers"),
        (f"{ids} --weights 0,0 --into model", "all weights are zero"),
        (f"{ids} --eval nothing_here", "no variable named 'nothing_here'"),
        (f"{ids} --method greedy", "needs eval_fn"),
        (f"{ids} --method ensemble", "numpy models cannot be ensembled"),
    ]:
        with pytest.raises(UsageError, match=match):
            ip.run_line_magic("mvc_merge", line)
    ip.user_ns["not_callable"] = 3
    with pytest.raises(UsageError, match="not callable"):
        ip.run_line_magic("mvc_merge", f"{ids} --eval not_callable")
    assert repo.index.count() == before
    for key, value in live.items():
        np.testing.assert_array_equal(ip.user_ns["model"][key], value)


def test_magic_is_registered_and_documented(ip):
    assert "mvc_merge" in ip.magics_manager.magics["line"]
    assert "--method" in ip.magics_manager.magics["line"]["mvc_merge"].__doc__
    ip.run_line_magic("unload_ext", "mvc_magics")
    assert "mvc_merge" not in ip.magics_manager.magics["line"]
    ip.run_line_magic("load_ext", "mvc_magics")


# -- the panel -----------------------------------------------------------------------------------


def test_panel_weights_shares_preview_and_commit(ip):
    pytest.importorskip("ipywidgets", reason="ipywidgets is not installed")
    repo, versions, _ = make_versions(ip, count=2, seed=4)
    ip.user_ns["bias_sum"] = lambda m: float(m["b"].sum())
    panel = ip.run_line_magic("mvc_merge", f"{versions[0].id} {versions[1].id} --widget")
    assert [s.description for s in panel.sliders] == [v.short_id for v in versions]
    assert [s.value for s in panel.shares] == ["50.0%", "50.0%"]
    panel.sliders[1].value = 3.0
    assert [s.value for s in panel.shares] == ["25.0%", "75.0%"]
    assert "bias_sum" in panel.eval_picker.options
    panel.eval_picker.value = "bias_sum"
    before = repo.index.count()
    panel.preview_button.click()
    assert panel.error is None and repo.index.count() == before  # preview commits nothing
    assert panel.last_preview.score == pytest.approx(2 * 0.75)
    assert "bias_sum = 1.5" in panel.status.value
    panel.message.value = "from the panel"
    panel.commit_button.click()
    version = panel.last_version
    assert repo.index.count() == before + 1
    assert version.message == "from the panel" and version.metrics["bias_sum"] == pytest.approx(1.5)
    assert version.extra["merge"]["weights"] == pytest.approx([0.25, 0.75])


def test_panel_shows_conflicts_in_the_panel_and_commits_nothing(ip):
    pytest.importorskip("ipywidgets", reason="ipywidgets is not installed")
    repo, versions, _ = make_versions(ip, count=2, seed=5)
    panel = repo.merge_panel([versions[0].id, versions[1].id], namespace=ip.user_ns)
    for slider in panel.sliders:
        slider.value = 0.0
    assert [s.value for s in panel.shares] == ["—", "—"]
    before = repo.index.count()
    panel.commit_button.click()
    assert panel.error == "all weights are zero: at least one version must have a positive weight"
    assert panel.last_version is None and repo.index.count() == before
    panel.method.value = "greedy"
    assert all(s.disabled for s in panel.sliders)


def test_magic_ensemble_into_a_new_variable(ip, capsys):
    from keras_models import dense_model, sample_input

    repo = session_of(ip).repo
    members = []
    for seed in range(2):
        ip.user_ns["net"] = dense_model(seed)
        ip.run_line_magic("mvc_commit", f"net -m seed{seed}")
        members.append(ip.user_ns["net"])
    ids = [v.id for v in reversed(repo.log("net"))]
    version = ip.run_line_magic("mvc_merge", f"{ids[0]} {ids[1]} --model net --method ensemble --into ens")
    assert version.name == "net_ensemble" and "0 B" in capsys.readouterr().out
    x, _ = sample_input("dense")
    expected = np.mean([np.asarray(m(x)) for m in members], axis=0)
    np.testing.assert_allclose(np.asarray(ip.user_ns["ens"](x)), expected, rtol=1e-5, atol=1e-6)
    assert ip.user_ns["net"] is members[1]  # the member variable is untouched


def test_show_of_a_weight_merge_names_its_inputs_and_method_not_an_optimizer(ip):
    from keras_models import linear_regression, train_reference

    from mvc_magics.core.details import VersionDetails

    model = linear_regression()
    ip.user_ns["model"] = model
    train_reference(model, 2)
    first = ip.run_line_magic("mvc_commit", "model -m first")
    train_reference(model, 2)
    second = ip.run_line_magic("mvc_commit", "model -m second")
    merged = ip.run_line_magic("mvc_merge", f"{first.short_id} {second.short_id} --weights 0.25,0.75 --model model")
    shown = ip.run_line_magic("mvc_show", f"{merged.short_id} --model model")
    assert isinstance(shown, VersionDetails)
    text = shown.to_text()
    provenance = dict(shown.origin())
    assert provenance["merge"] == "average"
    assert provenance["merge inputs"] == f"{first.id[:8]}, {second.id[:8]}"
    assert provenance["merge weights"] == "0.25, 0.75"
    # The compile setup is kept with the merged weights (for training on), but SGD did not make them.
    assert merged.extra["compile"] == first.extra["compile"]
    html = VersionDetails(shown.version, rich=True)._repr_html_()  # what Jupyter shows
    assert "merge inputs" in html and "merge inputs" in text
    for claim in ("optimizer", "learning_rate", "SGD"):
        assert claim not in text and claim not in html, claim
    # A trained version still shows how it was trained.
    trained = ip.run_line_magic("mvc_show", f"{second.short_id} --model model").to_text()
    assert "optimizer" in trained and "SGD" in trained
