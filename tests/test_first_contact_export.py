"""Export as a newcomer tries it (issue 25, item 7): the format follows the framework and the file
name, the help and the README name every format and option, a refusal names its remedies in full,
a tf.Module SavedModel has callable signatures (or is refused with the reason), and TensorFlow
prints no INFO lines about temporary folders."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from IPython.core.error import UsageError

from mvc_magics.errors import ExportError
from mvc_magics.operations.export import FORMATS

ROOT = Path(__file__).resolve().parents[1]


def test_the_format_follows_the_suffix_and_the_framework(ip, tmp_path):
    pytest.importorskip("sklearn")
    ip.run_cell("from sklearn.datasets import load_iris\n"
                "from sklearn.linear_model import LogisticRegression\n"
                "x, y = load_iris(return_X_y=True)\n"
                "lr = LogisticRegression(max_iter=300).fit(x, y)")
    ip.run_line_magic("mvc_commit", "lr")
    ip.run_line_magic("mvc_export", "latest lr.skops --model lr")  # no --format: skops, from both
    import skops.io

    path = tmp_path / "lr.skops"
    loaded = skops.io.load(path, trusted=skops.io.get_untrusted_types(file=path))
    assert (loaded.predict_proba(ip.user_ns["x"]) == ip.user_ns["lr"].predict_proba(ip.user_ns["x"])).all()
    with pytest.raises(UsageError, match=r"\.skops"):  # a name that says nothing: the remedy names the suffix
        ip.run_line_magic("mvc_export", "latest lr.bin --model lr")


def test_a_torch_model_exports_by_suffix(repo, tmp_path):
    torch = pytest.importorskip("torch")
    net = torch.nn.Linear(3, 2)
    version = repo.commit(net, "net")
    assert repo.export(version.id, tmp_path / "net.safetensors").name == "net.safetensors"
    assert repo.export(version.id, tmp_path / "net.pt").name == "net.pt"
    scripted = torch.jit.load(str(tmp_path / "net.pt"))
    x = torch.ones(1, 3)
    assert torch.equal(scripted(x), net(x))


def test_help_and_readme_name_every_format_and_option(ip):
    help_text = ip.find_line_magic("mvc_export").__self__.mvc_export.parser.format_help()
    docstring = ip.find_line_magic("mvc_export").__doc__
    for fmt in FORMATS:
        assert fmt in help_text, fmt
    assert "default: from" in help_text
    assert "three" not in docstring.lower() and "skops" in docstring
    readme = (ROOT / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| `%mvc_export"))
    assert "--from-live" in row and "--unsafe" in row


def _tf():
    return pytest.importorskip("tensorflow")


def test_a_refused_rebuild_names_every_remedy_uncut(ip, tmp_path):
    tf = _tf()

    class LinearRegression(tf.keras.Model):  # the origin document's model
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(2.0, name="weight")
            self.b = tf.Variable(0.5, name="bias")

        def call(self, x):
            return self.w * x + self.b

    ip.user_ns["model"] = LinearRegression()
    ip.run_line_magic("mvc_commit", "model")
    with pytest.raises(UsageError) as error:
        ip.run_line_magic("mvc_export", "latest served")
    message = str(error.value)
    assert "--unsafe" in message and "--from-live" in message and "..." not in message, message




def test_a_tf_module_savedmodel_has_its_signatures(repo, tmp_path):
    tf = _tf()

    class Linear(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(2.0)
            self.b = tf.Variable(0.5)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
        def __call__(self, x):
            return self.w * x + self.b

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
        def doubled(self, x):
            return 2.0 * (self.w * x + self.b)

    model = Linear()
    version = repo.commit(model, "lin")
    path = repo.export(version.id, tmp_path / "served", name="lin", classes={"Linear": Linear})
    loaded = tf.saved_model.load(str(path))
    assert set(loaded.signatures) == {"serving_default", "doubled"}
    out = loaded.signatures["serving_default"](tf.constant([1.0, 2.0]))
    assert next(iter(out.values())).numpy().tolist() == [2.5, 4.5]


def test_a_tf_module_without_input_signatures_is_refused_with_the_reason(repo, tmp_path):
    tf = _tf()

    class Bare(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(1.0)

        def __call__(self, x):
            return self.w * x

    version = repo.commit(Bare(), "bare")
    with pytest.raises(ExportError, match="input_signature"):
        repo.export(version.id, tmp_path / "served", name="bare", classes={"Bare": Bare})
    assert not (tmp_path / "served").exists()


def test_savedmodel_export_logs_no_temporary_folder(repo, tmp_path, caplog):
    tf = _tf()
    keras = pytest.importorskip("keras")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    version = repo.commit(model, "dense")

    class Linear(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(np.ones(3, np.float32))

        @tf.function(input_signature=[tf.TensorSpec([3], tf.float32)])
        def __call__(self, x):
            return self.w * x

    module_version = repo.commit(Linear(), "mod")
    logging.getLogger("tensorflow").setLevel(logging.INFO)
    with caplog.at_level(logging.INFO):
        repo.export(version.id, tmp_path / "dense-served", name="dense", format="savedmodel")
        repo.export(module_version.id, tmp_path / "mod-served", name="mod", classes={"Linear": Linear})
    assert not [r for r in caplog.records if "Assets written" in r.getMessage() or ".tmp-export" in r.getMessage()]
