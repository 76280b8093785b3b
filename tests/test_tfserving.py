"""TF Serving's layout: numbered SavedModel folders with serving_default, and mvc_versions.json naming the ids."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mvc_magics.errors import ExportError


def tiny(seed: int):
    import keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="relu"), keras.layers.Dense(1)])


def test_two_versions_served_from_their_numbered_folders(repo, tmp_path, ip, capsys):
    import tensorflow as tf

    x = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
    models = [tiny(1), tiny(2)]
    versions = [repo.commit(m, "net") for m in models]
    base = tmp_path / "serving"
    folders = [repo.export(v.id, base, format="tfserving") for v in versions]
    assert [f.name for f in folders] == ["1", "2"]
    assert json.loads((base / "mvc_versions.json").read_text()) == {"1": versions[0].id, "2": versions[1].id}
    for folder, model in zip(folders, models, strict=True):
        assert (folder / "saved_model.pb").is_file()
        served = tf.saved_model.load(str(folder)).signatures["serving_default"]
        (output,) = served(tf.constant(x)).values()
        np.testing.assert_allclose(output.numpy(), model.predict(x, verbose=0), rtol=1e-6)

    assert repo.export(versions[0].short_id, base, format="tfserving") == folders[0]  # a no-op naming its n
    assert sorted(p.name for p in base.iterdir()) == ["1", "2", "mvc_versions.json"]

    ip.run_line_magic("mvc_init", str(repo.path))
    capsys.readouterr()
    ip.run_line_magic("mvc_export", f"{versions[1].short_id} {base} --format tfserving --model net")
    assert f"already TF Serving version 2 at {base / '2'}" in capsys.readouterr().out


def test_a_foreign_index_or_file_is_refused(repo, tmp_path):
    version = repo.commit(tiny(3), "net")
    base = tmp_path / "serving"
    base.mkdir()
    (base / "mvc_versions.json").write_text('{"1": "not an id"}')
    with pytest.raises(ExportError, match="not an index written by mvc"):
        repo.export(version.id, base, format="tfserving")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ExportError, match="is not a folder"):
        repo.export(version.id, tmp_path / "file", format="tfserving")
    assert sorted(p.name for p in base.iterdir()) == ["mvc_versions.json"]
