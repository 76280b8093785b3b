"""Publish to a real MLflow registry: a sqlite:/// tracking store, and once through `mlflow server` on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from IPython.core.error import UsageError

from mvc_magics import Repo
from mvc_magics.errors import PublishError

mlflow = pytest.importorskip("mlflow")
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning",
                                        "ignore:The ``noload`` loader strategy:DeprecationWarning")


@pytest.fixture(scope="module")
def tracking(tmp_path_factory):
    """One sqlite tracking store for the module (creating its tables takes seconds), its artifacts in tmp."""
    folder = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        client = mlflow.MlflowClient(uri)
        client.create_experiment("mvc-tests", artifact_location=str(folder / "artifacts"))
        patch.setenv("MLFLOW_EXPERIMENT_NAME", "mvc-tests")
        yield {"uri": uri, "folder": folder}


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return x[:400].astype(np.float32), y[:400]


def sklearn_versions(repo, digits):
    from sklearn.linear_model import LogisticRegression

    x, y = digits
    model = LogisticRegression(max_iter=60)
    model.fit(x[:200], y[:200])
    first = repo.commit(model, "clf", message="C=1", metrics={"val_acc": model.score(x[200:], y[200:])},
                        params={"C": 1.0}, tags=["baseline"])
    model.set_params(C=0.05).fit(x[:300], y[:300])
    second = repo.commit(model, "clf", message="C=0.05", metrics={"val_acc": model.score(x[300:], y[300:])},
                         params={"C": 0.05})
    return first, second, model


def test_sklearn_version_registered_loaded_back_and_found_again(repo, tracking, digits):
    from sklearn.linear_model import LogisticRegression

    x, _ = digits
    first, second, model = sklearn_versions(repo, digits)
    published = repo.publish(first.id, "mlflow", registered_model_name="digits-clf", alias="champion")
    assert published.created and published.details["version"] == 1
    rebuilt = repo.checkout(first.id)  # the first version's own predictions
    assert isinstance(rebuilt, LogisticRegression)
    loaded = mlflow.pyfunc.load_model("models:/digits-clf@champion")
    np.testing.assert_array_equal(loaded.predict(x[:50]), rebuilt.predict(x[:50]))
    assert "sklearn" in loaded.metadata.flavors and "python_function" in loaded.metadata.flavors

    client = mlflow.MlflowClient()
    mv = client.get_model_version("digits-clf", "1")
    assert mv.tags["mvc_id"] == first.id and mv.tags["mvc_model"] == "clf" and mv.tags["mvc_tags"] == "baseline"
    run = client.get_run(mv.run_id)
    assert run.data.params == {"C": "1.0"}
    assert run.data.metrics["val_acc"] == pytest.approx(first.metrics["val_acc"])
    assert run.data.tags["mvc_id"] == first.id

    again = repo.publish(first.short_id, "mlflow", registered_model_name="digits-clf")
    assert not again.created and again.details["version"] == 1
    newer = repo.publish(second.id, "mlflow", registered_model_name="digits-clf", alias="champion")
    assert newer.created and newer.details["version"] == 2  # the alias moved to the new model version
    assert len(client.search_model_versions("name = 'digits-clf'")) == 2
    np.testing.assert_array_equal(mlflow.pyfunc.load_model("models:/digits-clf@champion").predict(x[:50]),
                                  model.predict(x[:50]))
    published_ops = [e for e in repo.audit.entries() if e.op == "publish"]
    assert [e.detail["created"] for e in published_ops] == [True, False, True]


def test_keras_torch_and_lightgbm_versions_load_back_with_their_own_predictions(repo, tracking):
    import keras
    import lightgbm
    import torch

    x = np.random.default_rng(0).standard_normal((16, 5)).astype(np.float32)
    net = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3, activation="tanh"), keras.layers.Dense(1)])
    version = repo.commit(net, "tiny-keras")
    repo.publish(version.id, "mlflow", registered_model_name="tiny-keras", alias="prod")
    loaded = mlflow.pyfunc.load_model("models:/tiny-keras@prod")
    assert "keras" in loaded.metadata.flavors
    np.testing.assert_allclose(np.asarray(loaded.predict(x)), net.predict(x, verbose=0), rtol=1e-6)

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    version = repo.commit(module, "tiny-torch")
    repo.publish(version.id, "mlflow", registered_model_name="tiny-torch", alias="prod")
    loaded = mlflow.pyfunc.load_model("models:/tiny-torch@prod")
    assert "pytorch" in loaded.metadata.flavors
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.asarray(loaded.predict(x)), expected, rtol=1e-6)

    target = x @ np.arange(5, dtype=np.float32)
    booster = lightgbm.train({"objective": "regression", "num_leaves": 4, "min_data_in_leaf": 2, "verbose": -1},
                             lightgbm.Dataset(x, target), num_boost_round=5)
    version = repo.commit(booster, "tiny-gbm")
    repo.publish(version.id, "mlflow", registered_model_name="tiny-gbm", alias="prod")
    loaded = mlflow.pyfunc.load_model("models:/tiny-gbm@prod")
    assert "lightgbm" in loaded.metadata.flavors
    np.testing.assert_array_equal(np.asarray(loaded.predict(x)), booster.predict(x))


def test_bad_requests_are_one_line_errors_and_register_nothing(repo, tracking, weights, ip):
    version = repo.commit(weights, "plain")
    with pytest.raises(PublishError, match="numpy model; MLflow publishing supports"):
        repo.publish(version.id, "mlflow", registered_model_name="plain")
    with pytest.raises(PublishError, match="needs registered_model_name"):
        repo.publish(version.id, "mlflow")
    with pytest.raises(PublishError, match="cannot publish to 'wandb'"):
        repo.publish(version.id, "wandb")
    with pytest.raises(PublishError, match="takes alias, registered_model_name, not path"):
        repo.publish(version.id, "mlflow", registered_model_name="x", path="y")
    assert mlflow.MlflowClient().search_registered_models("name = 'plain'") == []
    ip.user_ns["w"] = weights
    ip.run_line_magic("mvc_commit", "w")
    with pytest.raises(UsageError, match="numpy model"):
        ip.run_line_magic("mvc_publish", "HEAD mlflow plain --model w")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path, tracking, monkeypatch):
    """`mlflow server` on 127.0.0.1 (the module's store, artifacts served by the server), stopped after."""
    port = free_port()
    log = open(tmp_path / "server.log", "wb")  # closed below
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", tracking["uri"], "--artifacts-destination",
         str(tmp_path / "served"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "MLFLOW_TRACKING_URI": ""},
        start_new_session=True)  # its own process group: stopped whole (uvicorn workers too), signals stay there
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((tmp_path / "server.log").read_text()[-2000:])
            time.sleep(0.3)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        mlflow.MlflowClient(url).create_experiment("via-server")  # artifacts at mlflow-artifacts:/ (the server)
        monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "via-server")
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)  # whatever of the group is left
        server.wait()
        log.close()


def test_publish_through_an_mlflow_server_and_load_back(ip, mlflow_server, digits, tmp_path, capsys):
    """The magic, against `mlflow server`: artifacts go over HTTP, the registry answers over REST."""
    from sklearn.linear_model import LogisticRegression

    x, y = digits
    ip.user_ns["clf"] = LogisticRegression(max_iter=60).fit(x[:200], y[:200])
    ip.run_line_magic("mvc_commit", "clf --metric val_acc=0.9")
    capsys.readouterr()
    ip.run_line_magic("mvc_publish", "HEAD mlflow served-digits --alias staging")
    out = capsys.readouterr().out
    assert "registered model 'served-digits' version 1 (alias staging)" in out
    assert "mlflow.pyfunc.load_model('models:/served-digits@staging')" in out
    loaded = mlflow.pyfunc.load_model("models:/served-digits@staging")
    np.testing.assert_array_equal(loaded.predict(x[200:260]), ip.user_ns["clf"].predict(x[200:260]))
    mv = mlflow.MlflowClient().get_model_version_by_alias("served-digits", "staging")
    assert mv.tags["mvc_id"] == Repo(tmp_path / ".mvc").head("clf").id
    assert mlflow.MlflowClient().get_run(mv.run_id).info.artifact_uri.startswith("mlflow-artifacts:")
    ip.run_line_magic("mvc_publish", "HEAD mlflow served-digits")
    assert "already published" in capsys.readouterr().out
