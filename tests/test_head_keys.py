"""HEAD per notebook is per notebook (issue 23 §6): a notebook's HEAD is keyed by its path relative
to the store's folder (readable, with a digest), so two ``train.ipynb`` in different folders, or
two long names sharing their first 128 characters, never share one; stores written with the old
keys (the bare file name) keep working. (A refused commit leaving no empty ``objects/<ab>/``:
tests/test_shared_store.py, with real OS users.)"""

from __future__ import annotations

import numpy as np
import pytest

from mvc_magics import Repo
from mvc_magics.core.names import workspace_key, workspace_name


def weights(value: float) -> dict:
    return {"w": np.full(4, value, np.float32)}


@pytest.mark.parametrize("first, second", [
    ("exp1/train.ipynb", "exp2/train.ipynb"),  # the same name in two folders
    ("n/" + "a" * 140 + "1.ipynb", "n/" + "a" * 140 + "2.ipynb"),  # the same first 128 characters
])
def test_two_notebooks_that_used_to_collide_keep_their_own_head(tmp_path, first, second):
    store = tmp_path / ".mvc"
    assert workspace_name(first) == workspace_name(second)  # the old keys: one HEAD for both
    a = Repo(store, workspace=str(tmp_path / first))
    b = Repo(store, workspace=str(tmp_path / second))
    assert a.store.workspace != b.store.workspace
    a1 = a.commit(weights(1.0), "model")
    b1 = b.commit(weights(2.0), "model")
    assert a.head("model").id == a1.id and b.head("model").id == b1.id  # was b1 for both
    a2 = a.commit(weights(3.0), "model")
    assert list(a2.parents) == [a1.id]  # A's own line, never B's commit
    live = weights(0.0)
    b.checkout("HEAD", live, name="model")
    assert live["w"].tolist() == [2.0] * 4
    a.reindex()  # the ref files are the truth: both HEADs survive a rebuilt index
    assert a.head("model").id == a2.id and b.head("model").id == b1.id
    for key in (a.store.workspace, b.store.workspace):
        assert len(key) <= 128 and (store / "refs" / "model" / "heads" / key).is_file()
    text = str(a.log("model"))
    assert f"@{b.store.workspace}" in text  # shown readably: B's path and digest
    for repo in (a, b):
        repo.close()


def test_keys_are_readable_paths_relative_to_the_store_folder_with_a_digest(tmp_path):
    key = workspace_key(str(tmp_path / "exp1" / "train.ipynb"), str(tmp_path))
    assert key.startswith("exp1+train.ipynb=") and len(key) == len("exp1+train.ipynb=") + 12
    assert workspace_key("exp1/train.ipynb", str(tmp_path)) == key  # relative: to the store's folder
    assert workspace_key(key, "/elsewhere") == key  # a key stays a key
    assert workspace_key(None, str(tmp_path)) is None


def test_a_store_with_old_heads_keeps_them_until_the_notebook_moves_its_own(tmp_path):
    store = tmp_path / ".mvc"
    notebook = str(tmp_path / "exp1" / "train.ipynb")
    with Repo(store, workspace="train.ipynb=000000000000") as old:  # stands in for the old writer
        v1 = old.commit(weights(1.0), "model")
        v2 = old.commit(weights(2.0), "model")
        old.checkout(v1.id, weights(0.0), name="model")
    heads = store / "refs" / "model" / "heads"
    (heads / "train.ipynb=000000000000").rename(heads / "train.ipynb")  # the key older versions wrote
    with Repo(store, create=False) as repo:
        repo.reindex()
    with Repo(store, workspace=notebook) as repo:
        assert repo.store.legacy_workspace == "train.ipynb"
        assert repo.head("model").id == v1.id  # read through the old key
        assert repo.resolve("HEAD", name="model").id == v1.id
        assert [v.is_head for v in repo.log("model")] == [False, True]
        assert repo.status({"model": weights(1.0)})[0].head.id == v1.id
        v3 = repo.commit(weights(3.0), "model")
        assert list(v3.parents) == [v1.id]  # the commit continues from the old HEAD
        assert repo.head("model").id == v3.id
        assert (heads / repo.store.workspace).read_text().strip() == v3.id  # its own key from now on
        assert (heads / "train.ipynb").read_text().strip() == v1.id  # the old file is left for others
    assert v2.id  # (the other version is untouched)
