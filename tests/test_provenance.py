"""Provenance: data fingerprints, the cell recorder, what commits record, and %mvc_show."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from IPython.core.error import UsageError

from mvc_magics.core.details import VersionDetails
from mvc_magics.core.provenance import (
    MAX_CODE_CHARS,
    CellRecorder,
    build_provenance,
    compile_summary,
    fingerprint,
)
from mvc_magics.errors import UnsupportedDataError
from mvc_magics.magics import session_of


def run(shell, source):
    result = shell.run_cell(source)
    assert result.success, result.error_in_exec or result.error_before_exec
    return result


# -- fingerprints ------------------------------------------------------------------------------

def test_array_fingerprint_is_content_hash_shape_and_dtype():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    fp = fingerprint(x)
    assert fp == {"kind": "ndarray", "shape": [3, 4], "dtype": "float32", "hash": fp["hash"]}
    assert fingerprint(x.copy())["hash"] == fp["hash"]
    assert fingerprint(np.asfortranarray(x))["hash"] == fp["hash"]  # memory layout does not matter
    changed = x.copy()
    changed[2, 3] += 1
    assert fingerprint(changed)["hash"] != fp["hash"]
    assert fingerprint(x.astype(np.float64))["hash"] != fp["hash"]
    assert fingerprint(x.reshape(4, 3))["hash"] != fp["hash"]


def test_dataframe_fingerprint_covers_values_columns_and_index():
    frame = pd.DataFrame({"a": [1.0, 2.0, 3.0], "label": ["x", "y", "z"]})
    fp = fingerprint(frame)
    assert fp["kind"] == "DataFrame" and fp["shape"] == [3, 2]
    assert fp["dtype"]["a"] == "float64"
    assert fingerprint(frame.copy())["hash"] == fp["hash"]
    assert fingerprint(frame.rename(columns={"a": "b"}))["hash"] != fp["hash"]
    edited = frame.copy()
    edited.loc[1, "label"] = "w"
    assert fingerprint(edited)["hash"] != fp["hash"]
    assert fingerprint(frame.iloc[::-1])["hash"] != fp["hash"]
    series = fingerprint(frame["a"])
    assert series["kind"] == "Series" and series["shape"] == [3]


def test_list_and_tuple_fingerprints():
    numbers = fingerprint([[1, 2], [3, 4]])
    assert numbers["kind"] == "list" and numbers["shape"] == [2, 2] and numbers["length"] == 2
    assert fingerprint([[1, 2], [3, 5]])["hash"] != numbers["hash"]
    words = fingerprint(["cat", "dog"])
    assert words["dtype"] == "json" and words["shape"] == [2]
    x, y = np.zeros((4, 2), np.float32), np.ones(3, np.int64)
    pair = fingerprint((x, y))  # ragged: item by item
    assert [item["shape"] for item in pair["items"]] == [[4, 2], [3]]
    assert fingerprint((x, y + 1))["hash"] != pair["hash"]
    with pytest.raises(UnsupportedDataError, match="cannot fingerprint a object"):
        fingerprint(object())
    with pytest.raises(UnsupportedDataError):
        fingerprint([object(), 1])


# -- the cell recorder ---------------------------------------------------------------------------

def test_recorder_lists_cells_since_each_models_last_commit():
    recorder = CellRecorder()
    recorder.started("a = 1", 1)
    recorder.finished(True)
    recorder.idle()
    recorder.started("fit(model)", 2)
    assert [c.source for c in recorder.since("model")] == ["a = 1", "fit(model)"]
    recorder.committed("model")  # committed while cell 2 runs (e.g. by a callback at epoch 1)
    assert [c.source for c in recorder.since("model")] == ["fit(model)"]  # epoch 2: same cell
    assert [c.source for c in recorder.since("other")] == ["a = 1", "fit(model)"]
    recorder.finished(True)
    recorder.idle()
    recorder.started("   ", 3)  # blank cells are not recorded
    recorder.started("evaluate(model)", 4)
    assert [c.number for c in recorder.since("model")] == [4]


def test_recorder_memory_is_bounded():
    recorder = CellRecorder(keep=5)
    for number in range(20):
        recorder.started(f"x = {number}", number)
    assert len(recorder) == 5
    assert [c.number for c in recorder.since("m")] == [15, 16, 17, 18, 19]


def test_provenance_keeps_the_newest_cells_within_budget():
    recorder = CellRecorder()
    for number in range(10):
        recorder.started(f"# cell {number}\n" + "x" * (MAX_CODE_CHARS // 4), number)
    provenance = build_provenance(None, recorder.since("m"))
    assert provenance["cells"][-1]["number"] == 9
    assert provenance["cells_omitted"] == 10 - len(provenance["cells"])
    assert sum(len(c["source"]) for c in provenance["cells"]) <= MAX_CODE_CHARS


def test_compile_summary_from_a_keras_compile_config():
    config = {"optimizer": {"module": "keras.optimizers", "class_name": "SGD",
                            "config": {"name": "sgd", "learning_rate": 0.009999999776482582}},
              "loss": "mse", "metrics": ["mse"], "loss_weights": None}
    assert compile_summary(config) == {"optimizer": "SGD", "learning_rate": 0.01, "loss": "mse", "metrics": ["mse"]}
    assert compile_summary(None) == {}


# -- commits through the shell -------------------------------------------------------------------

def test_provenance_lists_the_cells_that_trained_the_version(ip, weights):
    ip.user_ns["w"] = weights
    run(ip, "import numpy as np\nlr = 0.5")
    run(ip, "w['dense/bias'] = w['dense/bias'] + lr  # train")
    run(ip, "%mvc_commit w -m first")
    run(ip, "w['out/kernel'] = w['out/kernel'] * (1 - lr)  # fine-tune")
    run(ip, "v2 = %mvc_commit w -m second")
    repo = session_of(ip).repo
    first, second = repo.resolve("HEAD~1", name="w"), ip.user_ns["v2"]
    sources = [c["source"] for c in first.provenance["cells"]]
    assert sources == ["import numpy as np\nlr = 0.5", "w['dense/bias'] = w['dense/bias'] + lr  # train",
                       "%mvc_commit w -m first"]
    assert [c["source"] for c in second.provenance["cells"]] == [
        "w['out/kernel'] = w['out/kernel'] * (1 - lr)  # fine-tune", "v2 = %mvc_commit w -m second"]
    assert repo.get(second.id).provenance["cells"] == second.provenance["cells"]  # stored, not only returned
    assert "numpy" in second.provenance["libraries"]


def test_commit_with_data_fingerprints(ip, weights):
    ip.user_ns.update(w=weights, x_train=np.arange(20.0).reshape(10, 2),
                      frame=pd.DataFrame({"a": [1, 2], "b": ["u", "v"]}), labels=[0, 1, 1, 0])
    version = ip.run_line_magic("mvc_commit", "w --data x_train frame --data labels")
    data = version.provenance["data"]
    assert set(data) == {"x_train", "frame", "labels"}
    assert data["x_train"] == fingerprint(ip.user_ns["x_train"])
    assert data["frame"]["shape"] == [2, 2] and data["labels"]["shape"] == [4]


def test_bad_data_is_refused_before_anything_is_written(ip, weights):
    ip.user_ns.update(w=weights, thing=object())
    with pytest.raises(UsageError, match="--data thing: cannot fingerprint"):
        ip.run_line_magic("mvc_commit", "w --data thing")
    with pytest.raises(UsageError, match="no variable named 'missing'"):
        ip.run_line_magic("mvc_commit", "w --data missing")
    assert session_of(ip).repo.index.count() == 0


def test_notebook_path_from_session_variable_or_environment(ip, weights, monkeypatch):
    ip.user_ns.update(w=weights, __session__="/home/me/project/train.ipynb")
    assert ip.run_line_magic("mvc_commit", "w").provenance["notebook"] == "/home/me/project/train.ipynb"
    del ip.user_ns["__session__"]
    monkeypatch.setenv("JPY_SESSION_NAME", "/srv/other.ipynb")
    weights["step"] = np.array(4, np.int64)
    assert ip.run_line_magic("mvc_commit", "w").provenance["notebook"] == "/srv/other.ipynb"


def test_keras_commit_records_the_compile_configuration(repo):
    from keras_models import linear_regression

    version = repo.commit(linear_regression(), "model")
    assert version.provenance["compile"] == {"optimizer": "SGD", "learning_rate": 0.01, "loss": "mse",
                                             "metrics": ["mse"]}
    assert "keras" in version.provenance["libraries"]
    assert "learning_rate 0.01" in " ".join(VersionDetails(version).to_text().split())


def test_show_text_and_code(ip, weights, capsys):
    ip.user_ns.update(w=weights, x=np.zeros((5, 2), np.float32))
    run(ip, "w['dense/bias'] = w['dense/bias'] + 2\nprint('trained')")
    run(ip, "%mvc_commit w -m trained --data x")
    details = ip.run_line_magic("mvc_show", "HEAD")
    assert isinstance(details, VersionDetails) and not details.rich  # a terminal shell: text only
    assert details._repr_html_() is None
    text = details.to_text()
    assert "message  trained" in text and "x: ndarray 5×2 float32 blake3:" in text
    assert "w['dense/bias'] = w['dense/bias'] + 2" in text and "print('trained')" not in text
    code = ip.run_line_magic("mvc_show", "HEAD --code --model w").to_text()
    assert "    print('trained')" in code
    ip.run_line_magic("config", 'MVCMagics.output = "html"')
    try:
        rich = ip.run_line_magic("mvc_show", "latest --code")
        html = rich._repr_html_()
        assert "<pre" in html and "print(&#x27;trained&#x27;)" in html and "blake3" in html
    finally:
        ip.run_line_magic("config", 'MVCMagics.output = "auto"')
    with pytest.raises(UsageError, match="no version"):
        ip.run_line_magic("mvc_show", "nosuchtag")


def test_cells_are_numbered_and_cells_before_load_ext_count(ip, weights):
    ip.user_ns["w"] = weights
    run(ip, "%mvc_commit w")  # earlier cells do not belong to the next version
    ip.run_line_magic("unload_ext", "mvc_magics")
    history = ip.history_manager.input_hist_raw
    saved = list(history)
    try:
        history.append("w['step'] = w['step'] * 10  # before load_ext")
        exec("w['step'] = w['step'] * 10", ip.user_ns)
        ip.run_line_magic("load_ext", "mvc_magics")
        result = ip.run_cell("%mvc_commit w -m numbered", store_history=True)
        assert result.success
    finally:
        history[:] = saved
    cells = session_of(ip).repo.head("w").provenance["cells"]
    assert cells[-2]["source"] == "w['step'] = w['step'] * 10  # before load_ext"
    assert cells[-1] == {"number": result.execution_count, "source": "%mvc_commit w -m numbered"}


def test_cells_before_a_checkout_do_not_belong_to_the_next_version(ip, weights):
    ip.user_ns["w"] = weights
    run(ip, "%mvc_commit w -m base")
    run(ip, "w['step'] = w['step'] + 100  # an experiment thrown away")
    run(ip, "%mvc_checkout HEAD w")
    run(ip, "w['step'] = w['step'] + 1  # the real change")
    version = ip.run_line_magic("mvc_commit", "w -m next")
    sources = [c["source"] for c in version.provenance["cells"]]
    assert sources == ["w['step'] = w['step'] + 1  # the real change"]
