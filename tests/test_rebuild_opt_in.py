"""Models whose class is user code (defined in the notebook) rebuild only with an explicit opt-in."""

from __future__ import annotations

import numpy as np
import pytest
from IPython.core.error import UsageError

from mvc_magics import Repo
from mvc_magics.errors import ExportError, UnsupportedModelError

NOTEBOOK_CELL = '''
import keras
import numpy as np

class TwoLayer(keras.Model):
    def __init__(self):
        super().__init__()
        self.hidden = keras.layers.Dense(4, activation="tanh")
        self.out = keras.layers.Dense(1)

    def call(self, x):
        return self.out(self.hidden(x))

keras.utils.set_random_seed(3)
net = TwoLayer()
x = np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3)
expected = np.asarray(net(x))
'''


def test_notebook_class_is_refused_without_opt_in_and_rebuilt_with_it(ip, tmp_path):
    ip.run_cell(NOTEBOOK_CELL).raise_error()
    assert ip.user_ns["TwoLayer"].__module__ == "__main__"
    ip.run_line_magic("mvc_commit", "net")
    with pytest.raises(UsageError, match=r"TwoLayer \(a class defined in the notebook\).*classes=") as refused:
        ip.run_line_magic("mvc_checkout", "latest --as copy")
    assert str(refused.value).endswith(".")  # whole sentences, never cut mid-word
    assert "copy" not in ip.user_ns
    ip.run_line_magic("mvc_checkout", "latest --as copy --unsafe")
    copy = ip.user_ns["copy"]
    assert type(copy) is ip.user_ns["TwoLayer"] and copy is not ip.user_ns["net"]
    np.testing.assert_array_equal(np.asarray(copy(ip.user_ns["x"])), ip.user_ns["expected"])

    with pytest.raises(UsageError, match="classes="):
        ip.run_line_magic("mvc_export", f"latest {tmp_path / 'a.keras'}")
    ip.run_line_magic("mvc_export", f"latest {tmp_path / 'a.keras'} --unsafe")
    ip.run_line_magic("mvc_export", f"latest {tmp_path / 'b.keras'} --from-live")
    assert (tmp_path / "a.keras").stat().st_size > 0 and (tmp_path / "b.keras").stat().st_size > 0


def test_api_classes_mapping_rebuilds_and_live_export_checks_content(ip, tmp_path):
    ip.run_cell(NOTEBOOK_CELL).raise_error()
    net, cls = ip.user_ns["net"], ip.user_ns["TwoLayer"]
    repo = Repo(tmp_path / "api-store")
    version = repo.commit(net, "net")
    with pytest.raises(UnsupportedModelError, match="pass classes="):
        repo.checkout(version.id, name="net")
    rebuilt = repo.checkout(version.id, name="net", classes={"TwoLayer": cls})
    np.testing.assert_array_equal(np.asarray(rebuilt(ip.user_ns["x"])), ip.user_ns["expected"])
    # The live model must hold the version it is exported as.
    rebuilt.out.kernel.assign(np.zeros((4, 1), np.float32))
    with pytest.raises(ExportError, match="does not hold version"):
        repo.export(version.id, tmp_path / "changed.keras", model=rebuilt)
    assert not (tmp_path / "changed.keras").exists()
    assert repo.export(version.id, tmp_path / "live.keras", model=net).exists()
    entry = repo.audit_log(limit=1)[0]
    assert entry.op == "export" and entry.detail["from_live"] is True
    repo.close()


def test_merge_of_notebook_class_rebuilds_with_opt_in_only(ip, tmp_path):
    ip.run_cell(NOTEBOOK_CELL + "\nother = TwoLayer(); other(x)\n").raise_error()
    repo = Repo(tmp_path / "merge-store")
    a = repo.commit(ip.user_ns["net"], "net")
    b = repo.commit(ip.user_ns["other"], "net")
    with pytest.raises(Exception, match="classes="):  # scoring runs the class; a plain average does not
        repo.merge([a.id, b.id], name="net", eval_fn=lambda m: 0.0)
    merged = repo.merge([a.id, b.id], name="net", classes={"TwoLayer": ip.user_ns["TwoLayer"]})
    state_a, state_b, state_m = (repo.load_state(v) for v in (a, b, merged))
    assert len(state_m) == len(state_a) == 4
    for m, ta, tb in zip(state_m.values(), state_a.values(), state_b.values(), strict=True):  # names renumbered
        np.testing.assert_allclose(m, (ta + tb) / 2, rtol=1e-6)
    repo.close()
