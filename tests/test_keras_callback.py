"""mvc_magics.keras.CommitCallback: commits during fit, save_best_only, scripts and notebooks."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from keras_models import REFERENCE_X, REFERENCE_XV, REFERENCE_Y, REFERENCE_YV, linear_regression

from mvc_magics.keras import CommitPolicy
from mvc_magics.magics import session_of

ROOT = Path(__file__).resolve().parents[1]


def scripted_scores(scores, key="score"):
    """A callback (run before ours) that puts a chosen value into each epoch's logs."""
    import keras

    def inject(epoch, logs):
        logs[key] = scores[epoch]

    return keras.callbacks.LambdaCallback(on_epoch_end=inject)


def fit(model, epochs, callbacks):
    return model.fit(REFERENCE_X, REFERENCE_Y, epochs=epochs, verbose=0,
                     validation_data=(REFERENCE_XV, REFERENCE_YV), callbacks=callbacks)


def test_commits_every_epoch_with_its_metrics_and_epoch_param(repo):
    from mvc_magics.keras import CommitCallback

    model = linear_regression()
    callback = CommitCallback(repo, name="model")
    history = fit(model, 3, [callback])
    log = repo.log("model")
    assert [v.params["epoch"] for v in log] == [3, 2, 1]
    for version in log:
        epoch = version.params["epoch"]
        assert version.metrics["val_loss"] == pytest.approx(history.history["val_loss"][epoch - 1])
        assert version.metrics["mse"] == pytest.approx(history.history["mse"][epoch - 1])
        assert version.message.startswith(f"epoch {epoch}/3 val_loss=")
        assert version.provenance["source"] == "CommitCallback"
        assert version.provenance["compile"]["optimizer"] == "SGD"
    assert [v.id for v in callback.versions] == [v.id for v in reversed(log)]
    assert log[0].is_head
    assert not repo.is_modified(model, log[0])  # the last version holds the trained weights


def test_the_structure_is_described_once_per_fit_and_stored_with_every_epoch(repo, monkeypatch):
    from mvc_magics.adapters.keras import KerasAdapter
    from mvc_magics.keras import CommitCallback

    described = []
    real = KerasAdapter.structure

    def counted(self, model):
        described.append(model)
        return real(self, model)

    monkeypatch.setattr(KerasAdapter, "structure", counted)
    model = linear_regression()
    callback = CommitCallback(repo, name="model")
    fit(model, 3, [callback])
    fit(model, 2, [callback])  # another fit describes the model again (it may have changed between fits)
    assert len(described) == 2
    expected = real(KerasAdapter(), model)
    assert len(callback.versions) == 5
    assert all(repo.store.content(v.id).structure == expected for v in callback.versions)


def test_save_best_only_commits_only_improvements(repo):
    from mvc_magics.keras import CommitCallback

    scores = [5.0, 3.0, 4.0, 2.0, 2.5, 1.0]
    callback = CommitCallback(repo, name="model", monitor="score", mode="min", save_best_only=True)
    fit(linear_regression(), len(scores), [scripted_scores(scores), callback])
    log = repo.log("model")
    assert [v.params["epoch"] for v in reversed(log)] == [1, 2, 4, 6]
    assert [v.metrics["score"] for v in reversed(log)] == [5.0, 3.0, 2.0, 1.0]


def test_save_best_only_mode_auto_and_max_and_every_n(repo):
    from mvc_magics.keras import CommitCallback

    accuracy = [0.5, 0.7, 0.6, 0.8, 0.8, 0.9]
    callback = CommitCallback(repo, name="acc", monitor="accuracy", save_best_only=True)  # auto: max
    fit(linear_regression(), 6, [scripted_scores(accuracy, "accuracy"), callback])
    assert [v.params["epoch"] for v in reversed(repo.log("acc"))] == [1, 2, 4, 6]
    every = CommitCallback(repo, name="every", every_n_epochs=2)
    fit(linear_regression(seed=1), 5, [every])
    assert [v.params["epoch"] for v in reversed(repo.log("every"))] == [2, 4]


def test_policy_validation_and_missing_monitor():
    assert CommitPolicy("val_loss").mode == "min" and CommitPolicy("val_accuracy").mode == "max"
    with pytest.raises(ValueError, match="mode"):
        CommitPolicy(mode="lowest")
    with pytest.raises(ValueError, match="every_n_epochs"):
        CommitPolicy(every_n_epochs=0)
    policy = CommitPolicy("val_loss", save_best_only=True)
    with pytest.warns(UserWarning, match="monitor 'val_loss' is not in the epoch logs"):
        assert policy.should_commit(0, {"loss": 1.0}) is False
    assert policy.should_commit(0, {"val_loss": float("nan")}) is False  # NaN is never best
    assert policy.should_commit(1, {"val_loss": 2.0}) is True


def test_works_in_a_script_without_ipython(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT / "tests")!r})
        from keras_models import REFERENCE_X, REFERENCE_XV, REFERENCE_Y, REFERENCE_YV, linear_regression
        from mvc_magics import Repo
        from mvc_magics.keras import CommitCallback

        model = linear_regression()
        callback = CommitCallback("store", name="regression", save_best_only=True)
        model.fit(REFERENCE_X, REFERENCE_Y, epochs=3, verbose=0,
                  validation_data=(REFERENCE_XV, REFERENCE_YV), callbacks=[callback])
        # Keras itself may import IPython; mvc_magics must not need its IPython layer
        assert "mvc_magics.magics" not in sys.modules
        log = Repo("store").log("regression")
        print(len(log), log[0].provenance["script"])
    """))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    count, path = result.stdout.split()
    assert int(count) == 3 and path == str(script)  # val_loss falls every epoch here


def test_in_a_notebook_the_first_commit_lists_the_training_cell(ip):
    run = ip.run_cell
    assert run(f"import sys; sys.path.insert(0, {str(ROOT / 'tests')!r})\n"
               "import keras_models as km\nmodel = km.linear_regression()").success
    result = run("from mvc_magics.keras import CommitCallback\n"
                 "cb = CommitCallback(name='model')\n"
                 "history = model.fit(km.REFERENCE_X, km.REFERENCE_Y, epochs=2, verbose=0, callbacks=[cb])")
    assert result.success, result.error_in_exec
    log = session_of(ip).repo.log("model")
    first, second = log[1], log[0]
    assert "CommitCallback(name='model')" in first.provenance["cells"][-1]["source"]
    assert "import keras_models as km" in first.provenance["cells"][0]["source"]
    assert [c["source"] for c in second.provenance["cells"]] == [first.provenance["cells"][-1]["source"]]


def test_importing_the_callback_module_and_loading_the_extension_import_no_framework():
    code = ("import sys, mvc_magics.keras, mvc_magics.plots.graph, mvc_magics.core.provenance, mvc_magics.magics; "
            "print(sorted(m for m in ('keras', 'tensorflow', 'matplotlib', 'pandas') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert result.stdout.strip() == "[]"
