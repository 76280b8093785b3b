"""scikit-learn versions come back bit for bit (issue 25, item 4): every fitted array with its
dtype, shape, bytes and memory order, so predictions after a checkout are identical, not close."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sklearn", reason="scikit-learn is not installed")
pytest.importorskip("skops.io", reason="skops is not installed")

from sklearn.datasets import load_digits
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

X, Y = load_digits(return_X_y=True)
X = X[:600]
Y = Y[:600]


def _arrays(obj, path: str = "", seen: set | None = None) -> dict[str, np.ndarray]:
    """Every numpy array reachable through an estimator's attributes, lists and dicts, by path."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return {}
    seen.add(id(obj))
    if isinstance(obj, np.ndarray):
        return {path: obj}
    found: dict[str, np.ndarray] = {}
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, list | tuple):
        items = enumerate(obj)
    elif hasattr(obj, "__dict__") and type(obj).__module__.startswith("sklearn"):
        items = vars(obj).items()
    else:
        return found
    for key, value in items:
        found.update(_arrays(value, f"{path}/{key}", seen))
    return found


def _assert_same_arrays(fitted, restored):
    expected, got = _arrays(fitted), _arrays(restored)
    assert set(got) == set(expected)
    for name, array in expected.items():
        back = got[name]
        assert back.dtype == array.dtype and back.shape == array.shape, name
        assert back.flags.f_contiguous == array.flags.f_contiguous, f"{name}: memory order changed"
        assert back.flags.c_contiguous == array.flags.c_contiguous, f"{name}: memory order changed"
        assert back.tobytes(order="A") == array.tobytes(order="A"), name


def _estimators():
    return {
        "logistic": LogisticRegression(max_iter=300).fit(X, Y),
        "pipeline": make_pipeline(StandardScaler(), LogisticRegression(max_iter=300)).fit(X, Y),
        "ridge-float32": Ridge().fit(X.astype(np.float32), Y.astype(np.float32)),
        "forest": RandomForestClassifier(n_estimators=3, max_depth=5, random_state=0).fit(X, Y),
    }


def test_a_fitted_logistic_regression_holds_a_fortran_ordered_coef():
    # What the test below guards: scikit-learn's lbfgs solver leaves coef_ Fortran-ordered.
    coef = LogisticRegression(max_iter=300).fit(X, Y).coef_
    assert coef.flags.f_contiguous and not coef.flags.c_contiguous


@pytest.mark.parametrize("kind", ["logistic", "pipeline", "ridge-float32", "forest"])
def test_checkout_and_rebuild_keep_dtype_memory_order_and_predictions(repo, kind):
    fitted = _estimators()[kind]
    predict = getattr(fitted, "predict_proba", fitted.predict)
    expected = predict(X)
    version = repo.commit(fitted, kind)

    rebuilt = repo.checkout(version.id)
    _assert_same_arrays(fitted, rebuilt)
    assert getattr(rebuilt, predict.__name__)(X).tobytes() == expected.tobytes()

    live = _estimators()[kind].fit(X[::2], Y[::2])
    assert getattr(live, predict.__name__)(X).tobytes() != expected.tobytes()
    repo.checkout(version.id, live)
    _assert_same_arrays(fitted, live)
    assert getattr(live, predict.__name__)(X).tobytes() == expected.tobytes()

