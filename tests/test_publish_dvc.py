"""Publish as a DVC model artifact in a real git + DVC repository, then `gto register` and DVC's API find it."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from mvc_magics import Repo
from mvc_magics.errors import PublishError

# ``import dvc`` replaces sys.stdout/sys.stderr with colorama wrappers. Left in place, ``import gto`` (its
# logging.config.dictConfig closes existing handlers) made absl's handler, created by TensorFlow in an
# earlier test module, close pytest's captured stderr, which no longer looked like sys.stderr: the run
# broke at exit (xdist: the worker ended before its first test). publish_dvc.dvc_classes does the same.
_streams = sys.stdout, sys.stderr
dvc_api = pytest.importorskip("dvc.api")
sys.stdout, sys.stderr = _streams
# gto is only looked for, never imported here: its import runs logging.config.dictConfig, which closes
# every logging handler of this process and disables every logger made so far (for the rest of the
# session, in every later test module). The tests run gto as a command.
if importlib.util.find_spec("gto") is None:
    pytest.skip("gto is not installed", allow_module_level=True)
pytestmark = [pytest.mark.skipif(shutil.which("git") is None, reason="the git binary is needed"),
              pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning"),
              pytest.mark.filterwarnings("ignore:_NoneStep.value:DeprecationWarning")]

BIN = Path(sys.executable).parent


def run(folder: Path, *args: str) -> str:
    """A command in ``folder`` (git, or dvc/gto from this Python's environment); its stdout."""
    exe = args[0] if args[0] == "git" else str(BIN / args[0])
    done = subprocess.run([exe, *args[1:]], cwd=folder, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(args)}: {done.stdout}{done.stderr}"
    return done.stdout


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A git work tree with DVC initialised and committed, the cwd inside it; no telemetry."""
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    monkeypatch.setenv("ITERATIVE_DO_NOT_TRACK", "1")
    monkeypatch.setenv("GTO_NO_ANALYTICS", "1")
    root = tmp_path / "project"
    root.mkdir()
    run(root, "git", "init", "-q", "-b", "main")
    run(root, "git", "config", "user.email", "t@example.com")
    run(root, "git", "config", "user.name", "t")
    run(root, "dvc", "init", "-q")
    run(root, "git", "commit", "-q", "-m", "dvc init")
    monkeypatch.chdir(root)
    return root


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return x[:300], y[:300]


def load_skops(file: Path):
    import skops.io

    return skops.io.load(file, trusted=skops.io.get_untrusted_types(file=file))


def commits(root: Path) -> int:
    return int(run(root, "git", "rev-list", "--count", "HEAD"))


def test_publish_commit_register_and_find_it_with_dvc_and_gto(project, digits, tmp_path):
    from sklearn.linear_model import LogisticRegression

    x, y = digits
    repo = Repo(tmp_path / "store")
    model = LogisticRegression(max_iter=50).fit(x[:150], y[:150])
    first = repo.commit(model, "digits", message="first fit", metrics={"val_acc": 0.91}, params={"C": 1.0},
                        tags=["baseline"])
    before = commits(project)
    published = repo.publish(first.id, "dvc", path="models/digits", artifact="digits")
    assert published.created and published.details["file"] == "model.skops"
    assert commits(project) == before  # publishing commits nothing: the user reviews and commits
    artifact = yaml.safe_load((project / "dvc.yaml").read_text())
    assert artifact["artifacts"]["digits"] == {
        "path": "models/digits", "type": "model", "desc": "first fit", "labels": ["baseline"],
        "meta": {"mvc_id": first.id, "mvc_model": "digits", "framework": "sklearn", "metrics": {"val_acc": 0.91},
                 "params": {"C": 1.0}}}
    assert (project / "models" / "digits.dvc").exists()
    assert "/digits" in (project / "models" / ".gitignore").read_text()  # the model bytes stay out of git
    assert json.loads((project / "models/digits/mvc_version.json").read_text())["mvc_id"] == first.id

    run(project, "git", "add", "dvc.yaml", "models/digits.dvc", "models/.gitignore")
    run(project, "git", "commit", "-q", "-m", "digits model from mvc")
    run(project, "gto", "register", "digits")
    shown = dvc_api.artifacts_show("digits", repo=str(project))
    assert shown == {"rev": run(project, "git", "rev-parse", "HEAD").strip(), "path": "models/digits"}
    loaded = load_skops(project / shown["path"] / "model.skops")
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    run(project, "dvc", "artifacts", "get", str(project), "digits", "-o", str(tmp_path / "fetched"))
    np.testing.assert_array_equal(load_skops(tmp_path / "fetched" / "model.skops").predict(x), model.predict(x))

    again = repo.publish(first.short_id, "dvc", path=project / "models" / "digits", artifact="digits")
    assert not again.created
    assert run(project, "git", "status", "--porcelain") == ""  # nothing changed

    model.set_params(C=0.1).fit(x, y)
    second = repo.commit(model, "digits", message="all data", metrics={"val_acc": 0.95})
    repo.publish(second.id, "dvc", path="models/digits", artifact="digits")
    run(project, "git", "commit", "-q", "-am", "retrained digits")
    run(project, "gto", "register", "digits")
    newest = dvc_api.artifacts_show("digits", repo=str(project))
    oldest = dvc_api.artifacts_show("digits", version="v0.0.1", repo=str(project))
    assert newest["rev"] == run(project, "git", "rev-parse", "HEAD").strip() and oldest["rev"] == shown["rev"]
    with dvc_api.open("models/digits/mvc_version.json", repo=str(project), rev=oldest["rev"]) as held:
        assert json.load(held)["mvc_id"] == first.id
    np.testing.assert_array_equal(load_skops(project / "models/digits/model.skops").predict(x), model.predict(x))


def test_magic_and_cli_publish_and_refusals_leave_the_repository_alone(project, digits, ip, tmp_path, capsys):
    """``ip`` works in tmp_path: the notebook sits at the top of a project made a DVC repository here."""
    import keras

    net = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    store = str(tmp_path / ".mvc")
    ip.run_line_magic("mvc_init", store)
    ip.user_ns["net"] = net
    ip.run_line_magic("mvc_commit", "net -m tiny")
    os.chdir(project)  # the notebook works in the project (the fixture's monkeypatch restores the cwd)
    capsys.readouterr()
    ip.run_line_magic("mvc_publish", "HEAD dvc models/net --artifact net-keras")
    out = capsys.readouterr().out
    assert "published" in out and "gto register net-keras" in out
    x = np.ones((3, 4), np.float32)
    reloaded = keras.saving.load_model(project / "models" / "net" / "model.keras")
    np.testing.assert_array_equal(reloaded.predict(x, verbose=0), net.predict(x, verbose=0))

    cli = subprocess.run([str(BIN / "mvc"), "--store", store, "publish", "HEAD", "dvc", "models/net",
                          "--artifact", "net-keras", "--model", "net"], cwd=project, capture_output=True, text=True,
                         timeout=300)
    assert cli.returncode == 0 and "already published" in cli.stdout, cli.stderr

    status = run(project, "git", "status", "--porcelain")
    with pytest.raises(PublishError, match="not a DVC artifact name"):
        Repo(store).publish("HEAD", "dvc", name="net", path="models/other", artifact="-bad-")
    (project / "notes").mkdir()
    (project / "notes" / "todo.txt").write_text("mine")
    with pytest.raises(PublishError, match="holds files not written by mvc publish"):
        Repo(store).publish("HEAD", "dvc", name="net", path="notes", artifact="net2")
    assert (project / "notes" / "todo.txt").read_text() == "mine"
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    with pytest.raises(PublishError, match="not inside a DVC repository"):
        Repo(store).publish("HEAD", "dvc", name="net", path=outside / "m", artifact="net")
    assert run(project, "git", "status", "--porcelain") == status + "?? notes/\n"


def test_importing_dvc_leaves_the_notebooks_output_streams_alone():
    """A fresh process (dvc not imported yet): publishing's import of DVC must not wrap stdout/stderr,
    which in a kernel would strip the colours of every later output."""
    code = ("import sys\nout, err = sys.stdout, sys.stderr\n"
            "from mvc_magics.operations.publish_dvc import dvc_classes\ndvc_classes()\n"
            "import dvc.logger\nassert 'dvc' in sys.modules\n"
            "print(sys.stdout is out, sys.stderr is err, type(sys.stdout).__module__)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True", "_io"]
