"""No framework is a dependency: the core installs without any, a notebook session on framework-free
models imports none, and a version whose framework is missing here says which extra to install.

These run in CI's framework-free job too (a venv with only the `torch` and `sklearn` extras), where the
Keras, LightGBM and JAX cases skip because those packages are really absent.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import store_state

ROOT = Path(__file__).resolve().parents[1]
FRAMEWORKS = ("tensorflow", "keras", "tf_keras", "torch", "sklearn", "skops", "lightgbm", "jax", "flax", "optax",
              "lightning", "safetensors")
EXTRAS = ("keras", "tf_keras", "torch", "sklearn", "lightgbm", "jax")


def pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib", reason="tomllib is Python 3.11+")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def requirement_names(requirements: list[str]) -> set[str]:
    return {r.split(";")[0].split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip().lower()
            for r in requirements}


def test_the_core_names_no_framework_and_each_framework_has_its_extra():
    project = pyproject()["project"]
    core = requirement_names(project["dependencies"])
    assert {"ipython", "numpy", "h5py", "blake3", "zstandard", "tqdm"} <= core
    heavy = {"tensorflow", "tensorflow-cpu", "keras", "tf_keras", "torch", "scikit-learn", "skops", "lightgbm", "jax",
             "jaxlib", "flax", "optax", "lightning"}
    assert not core & heavy, core & heavy
    extras = project["optional-dependencies"]
    assert {"keras", "tensorflow-cpu", "tensorflow"} <= requirement_names(extras["keras"])  # Keras's backend
    for extra, package in [("tf_keras", "tf_keras"), ("torch", "torch"), ("sklearn", "scikit-learn"),
                           ("lightgbm", "lightgbm"), ("jax", "jax")]:
        assert package in requirement_names(extras[extra]), extra
    # The README's commands keep working on a fresh machine: the demo trains Keras models, the suite all.
    assert "keras" in extras["notebooks"][0] and "sklearn" in extras["notebooks"][0]
    assert all(extra in extras["test"][0] for extra in EXTRAS)


# The two modules that exist to hold framework code (Keras layers the package defines, PyTorch modules
# of its ensembles); they are imported only when such a model is handled.
FRAMEWORK_MODULES = {"mvc_magics.keras_layers", "mvc_magics.adapters.torch_modules"}

IMPORT_EVERY_MODULE = textwrap.dedent("""
    import importlib, json, pkgutil, sys
    import mvc_magics
    from mvc_magics.errors import missing_package_message

    loaded = {}
    for info in pkgutil.walk_packages(mvc_magics.__path__, "mvc_magics."):
        if info.name in SKIP:
            continue
        try:
            importlib.import_module(info.name)
        except ModuleNotFoundError as exc:  # a part whose extra is not installed here (the widgets)
            if missing_package_message(exc) is None:
                raise
            continue
        loaded[info.name] = sorted(m for m in FRAMEWORKS if m in sys.modules)
    print(json.dumps(loaded))
""")


def test_no_module_of_the_package_imports_a_framework():
    """Importing any module (the magics, every adapter, the CLI, the widgets...) loads no framework."""
    code = f"FRAMEWORKS = {(*FRAMEWORKS, 'mlflow', 'dvc')!r}\nSKIP = {FRAMEWORK_MODULES!r}\n" + IMPORT_EVERY_MODULE
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(ROOT)})
    assert result.returncode == 0, result.stderr[-2000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(loaded) > 100 and "mvc_magics.magics" in loaded and "mvc_magics.adapters.keras" in loaded
    assert {module: frameworks for module, frameworks in loaded.items() if frameworks} == {}


# A notebook on framework-free models, every magic it would use: nothing may import a framework.
SESSION = textwrap.dedent("""
    import json, sys
    import numpy as np
    from IPython.core.error import UsageError
    from IPython.core.interactiveshell import InteractiveShell

    ip = InteractiveShell.instance()
    ip.history_manager.enabled = False
    ip.run_line_magic("load_ext", "mvc_magics")
    seen = {"load_ext": sorted(m for m in FRAMEWORKS if m in sys.modules)}
    ip.user_ns["net"] = {"w": np.ones((3, 2), np.float32), "b": np.zeros(2, np.float32)}
    first = ip.run_line_magic("mvc_commit", "net -m first --metric val_mse=0.5")
    ip.user_ns["net"]["w"] += 1
    second = ip.run_line_magic("mvc_commit", "net -m second --metric val_mse=0.2 --tag candidate")
    log = ip.run_line_magic("mvc_log", "")
    ip.run_line_magic("mvc_show", "candidate")
    changed = ip.run_line_magic("mvc_status", "")[0].changed
    ip.run_line_magic("mvc_checkout", f"{first.short_id} net")
    back = float(ip.user_ns["net"]["w"][0, 0])
    ip.run_line_magic("mvc_checkout", "best:val_mse --as best")
    best = float(ip.user_ns["best"]["w"][0, 0])
    ranked = ip.run_line_magic("mvc_compare", "")
    merged = ip.run_line_magic("mvc_merge", f"{first.id} {second.id} --into soup -m soup")
    soup = float(ip.user_ns["soup"]["w"][0, 0])
    ip.run_line_magic("mvc_tag", "latest production")
    ip.run_line_magic("mvc_audit", "")
    ip.run_line_magic("mvc_gc", "--keep last:1 --dry-run")
    try:
        ip.run_line_magic("mvc_export", "latest out.keras")
        export = "exported"
    except UsageError as exc:
        export = str(exc)
    seen["session"] = sorted(m for m in FRAMEWORKS if m in sys.modules)
    print(json.dumps({"seen": seen, "log": len(log), "changed": changed, "back": back, "best": best,
                      "ranked": len(ranked.versions), "merged": merged.parents == (first.id, second.id),
                      "soup": soup, "export": export}))
""")


def test_a_notebook_session_on_numpy_models_imports_no_framework(tmp_path):
    code = f"FRAMEWORKS = {FRAMEWORKS!r}\n" + SESSION
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["seen"] == {"load_ext": [], "session": []}
    assert out["log"] == 2 and out["changed"] is False and out["ranked"] == 2 and out["merged"]
    assert out["back"] == 1.0 and out["best"] == 2.0 and out["soup"] == 1.5
    assert "numpy model, which cannot be exported" in out["export"] and "\n" not in out["export"]


# -- a version whose framework is not installed here -------------------------------------------------

def keras_model():
    keras = pytest.importorskip("keras", reason="Keras is not installed")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    return model, ("keras", "tensorflow")


def torch_model():
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 2)), ("torch",)


def sklearn_model():
    pytest.importorskip("skops", reason="skops is not installed")
    from sklearn.linear_model import Ridge

    return Ridge().fit(np.arange(12.0).reshape(4, 3), np.arange(4.0)), ("sklearn", "skops")


def lightgbm_model():
    lgb = pytest.importorskip("lightgbm", reason="LightGBM is not installed")
    rng = np.random.default_rng(0)
    data = lgb.Dataset(rng.standard_normal((60, 3)), rng.standard_normal(60))
    return lgb.train({"verbose": -1, "num_leaves": 4}, data, num_boost_round=2), ("lightgbm",)


def jax_model():
    jnp = pytest.importorskip("jax.numpy", reason="JAX is not installed")
    return {"dense": {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}}, ("jax",)


# Makes the listed packages absent, as on a machine where they were never installed.
ABSENT = textwrap.dedent("""
    import importlib.abc, sys

    class Absent(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ABSENT:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, Absent())
""")

CHECKOUT = textwrap.dedent("""
    import json
    from IPython.core.error import UsageError
    from IPython.core.interactiveshell import InteractiveShell
    from mvc_magics import Repo
    from mvc_magics.errors import MissingFrameworkError

    errors = []
    with Repo(STORE) as repo:
        for call in (lambda: repo.checkout("latest"), lambda: repo.export("latest", "out" + SUFFIX, format=FORMAT)):
            try:
                call()
                errors.append("no error")
            except MissingFrameworkError as exc:
                errors.append(str(exc))
    ip = InteractiveShell.instance()
    ip.history_manager.enabled = False
    ip.run_line_magic("load_ext", "mvc_magics")
    ip.run_line_magic("mvc_init", STORE)
    try:
        ip.run_line_magic("mvc_checkout", "latest --as model")
        errors.append("no error")
    except UsageError as exc:
        errors.append(str(exc))
    print(json.dumps({"errors": errors, "model" : "model" in ip.user_ns,
                      "imported": sorted(m for m in ABSENT if m in sys.modules)}))
""")


@pytest.mark.parametrize(("make", "extra", "fmt", "suffix"), [
    (keras_model, "keras", "keras", ".keras"), (torch_model, "torch", "safetensors", ".safetensors"),
    (sklearn_model, "sklearn", "skops", ".skops"), (lightgbm_model, "lightgbm", "lightgbm", ".txt"),
    (jax_model, "jax", "safetensors", ".safetensors"),
], ids=["keras", "torch", "sklearn", "lightgbm", "jax"])
def test_a_version_whose_framework_is_not_installed_names_the_extra(repo, tmp_path, make, extra, fmt, suffix):
    model, packages = make()
    version = repo.commit(model, "model")
    before = store_state(repo.path)
    code = (f"ABSENT = {packages!r}\nSTORE = {str(repo.path)!r}\nFORMAT = {fmt!r}\nSUFFIX = {suffix!r}\n"
            + ABSENT + CHECKOUT)
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    framework = version.framework
    expected = (f"this is a {framework} model and {packages[0]} is not installed here: "
                f'pip install "mvc_magics[{extra}]"')
    assert out["errors"] == [expected] * 3  # Repo.checkout, Repo.export, %mvc_checkout --as (one line)
    assert out["model"] is False and out["imported"] == []
    assert store_state(repo.path) == before  # refused before anything was written (no HEAD moved)


OPTIONAL_PARTS = textwrap.dedent("""
    import contextlib, io, json
    import numpy as np
    from IPython.core.error import UsageError
    from IPython.core.interactiveshell import InteractiveShell
    from mvc_magics.cli import main

    ip = InteractiveShell.instance()
    ip.history_manager.enabled = False
    ip.run_line_magic("load_ext", "mvc_magics")
    ip.user_ns["net"] = {"w": np.ones(3, np.float32)}
    ip.run_line_magic("mvc_commit", "net --metric acc=0.5")
    ip.user_ns["net"]["w"] += 1
    ip.run_line_magic("mvc_commit", "net --metric acc=0.7")
    ip.run_line_magic("mvc_remote", "add origin s3://bucket/models")
    errors = []
    for magic, line in (("mvc_compare", "--widget"), ("mvc_push", "origin")):
        try:
            ip.run_line_magic(magic, line)
            errors.append("no error")
        except UsageError as exc:
            errors.append(str(exc))
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.suppress(SystemExit):
        main(["push", "origin"])
    errors.append(stderr.getvalue())
    print(json.dumps(errors))
""")


def test_a_missing_optional_part_is_one_line_naming_its_extra(tmp_path):
    """The widgets and the remotes are extras too: a magic or the CLI that needs one says which."""
    code = "ABSENT = ('ipywidgets', 'fsspec', 's3fs')\n" + ABSENT + OPTIONAL_PARTS
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-2000:]
    widget, push, cli = json.loads(result.stdout.strip().splitlines()[-1])
    assert widget == 'ipywidgets is not installed here: pip install "mvc_magics[widgets]"'
    # The remotes say it their own way (which fsspec package another store needs).
    assert "No module named 'fsspec' (pip install \"mvc_magics[remote]\" for S3" in push and "\n" not in push
    assert cli == f"mvc: error: {push}\n"
