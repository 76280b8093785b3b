"""Issue 13 §3: HEAD is the version a variable holds in one notebook; the history is shared."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mvc_magics import Repo


def weights(value: float) -> dict:
    return {"w": np.full((3, 2), value, np.float32), "b": np.zeros(2, np.float32)}


def test_two_notebooks_on_one_store_each_keep_their_own_head(store_path):
    a, b = Repo(store_path, workspace="A.ipynb"), Repo(store_path, workspace="B.ipynb")
    model_a, model_b = weights(1.0), weights(2.0)
    a1 = a.commit(model_a, "model")
    b1 = b.commit(model_b, "model")
    assert a.head("model").id == a1.id and b.head("model").id == b1.id
    assert not a.is_modified(model_a, a.head("model"))  # A's status: unchanged
    model_a["b"] = model_a["b"] + 1
    a2 = a.commit(model_a, "model")
    assert list(a2.parents) == [a1.id]  # not B's commit
    assert a.resolve("HEAD~1", name="model").id == a1.id
    live = weights(0.0)
    a.checkout("HEAD~1", live, name="model")
    assert np.array_equal(live["w"], weights(1.0)["w"])  # A's own history line, never B's weights
    # One shared history; log says whose HEAD is where.
    assert {v.id for v in a.log("model")} == {a1.id, b1.id, a2.id}
    text = str(b.log("model"))
    assert "@A.ipynb" in text and "HEAD" in text
    # The ref files are the truth: a rebuilt index keeps every notebook's HEAD.
    a.reindex()
    assert a.head("model").id == a1.id and b.head("model").id == b1.id
    for repo in (a, b):
        repo.close()


def test_the_magics_use_the_notebooks_own_head(ip, tmp_path):
    ip.user_ns["__session__"] = str(tmp_path / "A.ipynb")
    ip.user_ns["model"] = weights(1.0)
    a1 = ip.run_line_magic("mvc_commit", "model")
    ip.user_ns["__session__"] = str(tmp_path / "B.ipynb")  # another notebook, same variable name
    ip.user_ns["model"] = weights(2.0)
    b1 = ip.run_line_magic("mvc_commit", "model")
    ip.user_ns["__session__"] = str(tmp_path / "A.ipynb")
    ip.user_ns["model"] = weights(1.0)
    (entry,) = list(ip.run_line_magic("mvc_status", ""))
    assert entry.head.id == a1.id and not entry.changed
    ip.user_ns["model"]["b"] = ip.user_ns["model"]["b"] + 3
    a2 = ip.run_line_magic("mvc_commit", "model")
    assert list(a2.parents) == [a1.id] and b1.id not in a2.parents
    files = sorted(p.name for p in (Path(".mvc") / "refs" / "model" / "heads").iterdir())
    from mvc_magics.core.names import workspace_key

    # Keyed by the notebook's path relative to the store's folder (readable, with a digest: issue 23 §6).
    assert files == sorted(workspace_key(n, str(Path.cwd())) for n in ("A.ipynb", "B.ipynb"))
    assert all(f.startswith(("A.ipynb=", "B.ipynb=")) for f in files)
    ip.user_ns.pop("__session__")


def test_a_head_of_a_removed_version_moves_in_every_notebook(store_path):
    a, b = Repo(store_path, workspace="A.ipynb"), Repo(store_path, workspace="B.ipynb")
    v1 = a.commit(weights(1.0), "model")
    v2 = a.commit(weights(2.0), "model")
    b.checkout(v2.id, weights(0.0), name="model")
    a.remove(v2.id, name="model")
    assert a.head("model").id == v1.id and b.head("model").id == v1.id
    for repo in (a, b):
        repo.close()


@pytest.mark.parametrize("notebook, expected", [("/x/train.ipynb", "train.ipynb"), ("my notebook.ipynb",
                                                "my_notebook.ipynb"), ("", None), (".hidden.ipynb", "hidden.ipynb")])
def test_workspace_names_come_from_the_notebook_file(notebook, expected):
    from mvc_magics.core.names import workspace_name

    assert workspace_name(notebook) == expected


def test_a_tag_deleted_here_does_not_come_back_on_the_next_pull(tmp_path):
    remote = (tmp_path / "remote").as_uri()
    with Repo(tmp_path / "a" / ".mvc") as a:
        v1 = a.commit(weights(1.0), "model", tags=["candidate"])
        v2 = a.commit(weights(2.0), "model")
        a.add_remote("origin", remote)
        a.push()
    with Repo.clone(remote, tmp_path / "b" / ".mvc") as b:
        assert b.resolve("candidate", name="model").id == v1.id
        b.untag("candidate", name="model")
        report = b.pull()
        assert "candidate" not in b.tag_names("model") and report.kept_deleted == ["candidate"]
        assert "deleted here: candidate" in str(report)
        with Repo(tmp_path / "a" / ".mvc") as a:  # the remote moves the tag: that is news, and is pulled
            a.tag(v2.id, "candidate", name="model", force=True)
            a.push(force=True)
        b.pull()
        assert b.resolve("candidate", name="model").id == v2.id


def test_a_training_callback_in_a_notebook_moves_that_notebooks_head(ip, tmp_path):
    pytest.importorskip("keras", reason="the Keras callback needs Keras")
    from mvc_magics.keras import CommitCallback
    from tests.keras_models import REFERENCE_X, REFERENCE_Y, linear_regression

    ip.user_ns["__session__"] = str(tmp_path / "A.ipynb")
    model = linear_regression()
    callback = CommitCallback(name="model")
    model.fit(REFERENCE_X, REFERENCE_Y, epochs=2, verbose=0, callbacks=[callback])
    with Repo(tmp_path / ".mvc", workspace="A.ipynb") as a, Repo(tmp_path / ".mvc") as shared:
        assert a.head("model").id == a.log("model")[0].id
        assert shared.head("model") is None  # the callback moved the notebook's HEAD, not the shared one
    ip.user_ns.pop("__session__")
