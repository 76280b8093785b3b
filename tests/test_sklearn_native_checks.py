"""scikit-learn models whose compiled code trusts stored indices come back without ``unsafe``:
HistGradientBoosting (``TreePredictor`` node records, the bin mapper) and nearest neighbours
(``KDTree``/``BallTree`` and their distances) are validated before the model is returned, so a
user's own version checks out bit for bit, and a crafted one is refused in one line without the
process dying or the live model changing.

Attacks are made as in test_rebuild_attacks: a real commit whose adapter output was edited (what a
teammate with write access can store); the victim's checkout, and the call that would read out of
bounds, run in a child process.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import store_state
from test_rebuild_attacks import _commit_poisoned, _one_line, _victims_in_child
from test_rebuild_attacks import _poke as _set
from test_rebuild_attacks import _set_tensor as _edit_tensor

from mvc_magics.errors import UnsupportedModelError

pytest.importorskip("sklearn", reason="scikit-learn is not installed")
pytest.importorskip("skops.io", reason="skops is not installed")

from sklearn.cluster import KMeans
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_digits, load_iris
from sklearn.decomposition import PCA
from sklearn.ensemble import (
    ExtraTreesClassifier,
    GradientBoostingClassifier,
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
)
from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import LabelEncoder, OneHotEncoder, StandardScaler
from sklearn.svm import SVC, SVR

DIGITS_X, DIGITS_Y = load_digits(return_X_y=True)
DIGITS_X, DIGITS_Y = DIGITS_X[:500], DIGITS_Y[:500]
IRIS_X, IRIS_Y = load_iris(return_X_y=True)


def _outputs(model, X):
    """Everything a user reads from ``model`` on ``X``, by method name."""
    out = {}
    for method in ("predict", "predict_proba", "decision_function", "transform", "score_samples", "kneighbors"):
        if hasattr(model, method):
            try:
                value = getattr(model, method)(X)
            except (AttributeError, ValueError, TypeError):  # e.g. SVR has no predict_proba behind hasattr
                continue
            out[method] = value if isinstance(value, tuple) else (value,)
    return out


def _assert_bit_identical(model, rebuilt, X):
    expected, got = _outputs(model, X), _outputs(rebuilt, X)
    assert expected and set(got) == set(expected)
    for method, values in expected.items():
        for value, back in zip(values, got[method], strict=True):
            value, back = (v.toarray() if hasattr(v, "toarray") else np.asarray(v) for v in (value, back))
            assert back.dtype == value.dtype and back.tobytes() == value.tobytes(), method


def _users_models():
    digits, iris = (DIGITS_X, DIGITS_Y), (IRIS_X, IRIS_Y)
    return {
        "hgb_digits": (HistGradientBoostingClassifier(max_iter=15, random_state=0), digits),
        "hgbr_digits": (HistGradientBoostingRegressor(max_iter=15, random_state=0), digits),
        "hgb_iris_early_stop": (HistGradientBoostingClassifier(max_iter=30, early_stopping=True,
                                                               validation_fraction=0.2, random_state=0), iris),
        "knn_digits": (KNeighborsClassifier(), digits),
        "knnr_digits_ball": (KNeighborsRegressor(algorithm="ball_tree", weights="distance"), digits),
        "knn_iris_kd_manhattan": (KNeighborsClassifier(algorithm="kd_tree", p=1), iris),
        "knn_iris_weighted_minkowski": (KNeighborsRegressor(algorithm="ball_tree", p=3,
                                                            metric_params={"w": np.arange(1.0, 5.0)}), iris),
        "scaled_hgb": (make_pipeline(StandardScaler(), HistGradientBoostingClassifier(max_iter=10)), iris),
        "scaled_knn": (make_pipeline(StandardScaler(), KNeighborsClassifier(3)), digits),
        "rf": (RandomForestClassifier(5, random_state=0), digits),
        "gb": (GradientBoostingClassifier(n_estimators=5, random_state=0), iris),
        "et": (ExtraTreesClassifier(5, random_state=0), digits),
        "svc": (SVC(probability=True, random_state=0), iris),
        "svr": (SVR(), iris),
        "mlp": (MLPClassifier((16,), max_iter=50, random_state=0), digits),
        "kmeans": (KMeans(4, n_init=1, random_state=0), digits),
        "pca": (PCA(5), digits),
        "onehot_sparse_knn": (make_pipeline(ColumnTransformer([("scaled", StandardScaler(), [0, 1]),
                                                               ("onehot", OneHotEncoder(), [2])]),
                                            KNeighborsClassifier()), iris),  # KNN fitted on a CSR matrix
        "columns": (make_pipeline(ColumnTransformer([("scaled", StandardScaler(), [0, 1]),
                                                     ("onehot", OneHotEncoder(sparse_output=False,
                                                                              handle_unknown="ignore"), [2, 3])]),
                                  KNeighborsClassifier()), iris),
    }


@pytest.mark.filterwarnings("ignore")
def test_models_users_train_check_out_bit_for_bit_without_unsafe(repo):
    for name, (model, (X, y)) in _users_models().items():
        model.fit(X, y)
        version = repo.commit(model, name)
        rebuilt = repo.checkout(version.id, name=name)  # no unsafe, no classes=
        assert rebuilt is not model and type(rebuilt) is type(model)
        _assert_bit_identical(model, rebuilt, X)
    labels = LabelEncoder().fit(IRIS_Y * 10)
    rebuilt = repo.checkout(repo.commit(labels, "labels").id, name="labels")
    assert rebuilt.transform(IRIS_Y * 10).tobytes() == labels.transform(IRIS_Y * 10).tobytes()


def test_checkout_into_the_live_model_keeps_predictions_bit_identical(repo):
    for name, model in {"hgb": HistGradientBoostingClassifier(max_iter=10, random_state=0),
                        "knn": KNeighborsClassifier(algorithm="kd_tree")}.items():
        model.fit(DIGITS_X, DIGITS_Y)
        expected = model.predict_proba(DIGITS_X)
        version = repo.commit(model, name)
        model.fit(DIGITS_X[::2], DIGITS_Y[::2])
        repo.checkout(version.id, model)
        assert model.predict_proba(DIGITS_X).tobytes() == expected.tobytes()


# -- crafted HistGradientBoosting predictors ---------------------------------------------------------

NODES = "_predictors/0/0/nodes"


def _edit_nodes(edit):
    def poison(taken):
        structure, tensors = taken
        tensors = {k: v.copy() for k, v in tensors.items()}
        fields = {k.rsplit("/", 1)[1]: v for k, v in tensors.items() if k.startswith(NODES + "/")}
        inner = np.flatnonzero(fields["is_leaf"] == 0)
        edit(fields, inner, tensors)
        return structure, tensors
    return poison


def _categorical_root(fields, inner, tensors):
    fields["is_categorical"][0] = 1
    fields["bitset_idx"][0] = 0
    for name in ("binned_left_cat_bitsets", "raw_left_cat_bitsets"):
        tensors[f"_predictors/0/0/{name}"] = np.zeros((1, 8), np.uint32)  # a bitset, but no categorical feature


HGB_ATTACKS = {
    "child index 1e9": lambda f, inner, t: f["left"].__setitem__(0, 10**9),
    "cycle back to the root": lambda f, inner, t: f["right"].__setitem__(inner[-1], 0),
    "two parents for one node": lambda f, inner, t: f["right"].__setitem__(0, f["left"][0]),
    "feature index past the row": lambda f, inner, t: f["feature_idx"].__setitem__(0, 10**9),
    "categorical split past its bitsets": lambda f, inner, t: (f["is_categorical"].__setitem__(0, 1),
                                                               f["bitset_idx"].__setitem__(0, 10**6)),
    "categorical split on a numerical feature": _categorical_root,
}


@pytest.mark.filterwarnings("ignore")
def test_crafted_hist_gradient_boosting_is_refused_and_never_crashes(repo):
    from mvc_magics.adapters.sklearn import SklearnAdapter

    model = HistGradientBoostingClassifier(max_iter=3, random_state=0).fit(IRIS_X, IRIS_Y)
    expected = model.predict_proba(IRIS_X)
    checkouts = []
    for _attack, edit in sorted(HGB_ATTACKS.items()):
        version = _commit_poisoned(repo, SklearnAdapter, "take_apart", _edit_nodes(edit), model, "hgb")
        use = "model.predict(np.ones((3, 4))); model.predict(np.full((3, 4), np.nan))"
        checkouts.append((version.id, "hgb", use))
    _assert_all_refused(repo, checkouts, sorted(HGB_ATTACKS), model, checkouts[0][0], expected)


def _assert_all_refused(repo, checkouts, attacks, model, live_target, expected):
    """Every crafted version is refused by the checks (not as untrusted) in a child that survives, the
    store is unchanged, and in this process a checkout into the live model is refused and leaves it
    as it was."""
    before = store_state(repo.path)
    code, lines = _victims_in_child(repo.path, checkouts)
    assert code == 0, f"the victim's process died (exit {code}) after: {lines}"
    assert len(lines) == len(attacks), lines
    for attack, line in zip(attacks, lines, strict=True):
        assert line.startswith("REFUSED UnsupportedModelError") and "malformed" in line, (attack, line)
        assert "<newline>" not in line
    assert store_state(repo.path) == before
    with pytest.raises(UnsupportedModelError) as refused:
        repo.checkout(live_target, model)
    assert "malformed" in _one_line(refused.value)
    assert model.predict_proba(IRIS_X).tobytes() == expected.tobytes()


# -- crafted nearest-neighbour trees -------------------------------------------------------------------

def _tree_numbers(n_levels, n_nodes):
    """Edit the KDTree's stored level and node counts (a fresh __id__: skops reuses one node per id)."""
    def poison(taken):
        structure = json.loads(json.dumps(taken[0]))
        state = structure["schema"]["content"]["content"]["_tree"]["content"]["content"]
        for at, value, ident in ((5, n_levels, 987660), (6, n_nodes, 987661)):
            state[at] = {**state[at], "content": str(value), "__id__": ident}
        return structure, taken[1]
    return poison


KNN_ATTACKS = {
    "point index 1e9": _edit_tensor("_tree/1", _set(0, 10**9)),
    "a point indexed twice": _edit_tensor("_tree/1", lambda a: _set(1, a[0])(a)),
    "overlapping node ranges": _edit_tensor("_tree/2/idx_end", _set(1, 150)),
    "a node range past the points": _edit_tensor("_tree/2/idx_end", _set(0, 10**6)),
    "a last-level node that is not a leaf": _edit_tensor("_tree/2/is_leaf", _set(-1, 0)),
    "node bounds narrower than the rows": _edit_tensor("_tree/3", lambda a: np.ascontiguousarray(a[:, :, :1])),
    "more nodes than levels allow": _tree_numbers(3, 15),
    "fewer levels for the same nodes": _tree_numbers(2, 7),
    "tree data narrower than the estimator's": _edit_tensor("_tree/0", lambda a: np.ascontiguousarray(a[:, :2])),
}


@pytest.mark.filterwarnings("ignore")
def test_crafted_neighbour_trees_are_refused_and_never_crash(repo):
    from mvc_magics.adapters.sklearn import SklearnAdapter

    model = KNeighborsClassifier(algorithm="kd_tree", leaf_size=30).fit(IRIS_X, IRIS_Y)
    weighted = KNeighborsRegressor(algorithm="ball_tree", p=3, metric_params={"w": np.ones(4)}).fit(IRIS_X, IRIS_Y)
    expected = model.predict_proba(IRIS_X)
    use = ("model.predict(np.ones((3, 4))); model.kneighbors(np.ones((3, 4)), 10); "
           "model._tree.query_radius(np.ones((2, 4)), r=100.0)")
    checkouts = []
    for _attack, poison in sorted(KNN_ATTACKS.items()):
        checkouts.append((_commit_poisoned(repo, SklearnAdapter, "take_apart", poison, model, "knn").id, "knn", use))
    short_weights = _edit_tensor("_tree/11/1", lambda a: a[:1].copy())  # Minkowski weights for 1 of 4 features
    version = _commit_poisoned(repo, SklearnAdapter, "take_apart", short_weights, weighted, "weighted")
    checkouts.append((version.id, "weighted", use))
    _assert_all_refused(repo, checkouts, [*sorted(KNN_ATTACKS), "Minkowski weights for 1 of 4 features"], model,
                        checkouts[2][0], expected)


def test_node_layout_matches_what_scikit_learn_builds():
    """The recomputed layout is scikit-learn's own, for sizes around every power of two."""
    from sklearn.neighbors import BallTree, KDTree

    from mvc_magics.adapters.sklearn_neighbors import binary_tree_problem, expected_nodes

    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 7, 8, 9, 31, 64, 65, 127, 300, 1000):
        for leaf_size in (1, 2, 5, 40):
            for tree_type in (KDTree, BallTree):
                tree = tree_type(rng.normal(size=(n, 3)), leaf_size=leaf_size)
                _data, _index, nodes, _bounds = tree.get_arrays()
                reached, start, end, leaf = expected_nodes(n, nodes.shape[0])
                assert reached.all()
                assert (nodes["idx_start"] == start).all() and (nodes["idx_end"] == end).all()
                assert ((nodes["is_leaf"] != 0) == leaf).all()
                assert binary_tree_problem(tree) is None


@pytest.mark.filterwarnings("ignore")
def test_crafted_sparse_matrix_is_refused_and_never_crashes(repo):
    from scipy.sparse import csr_matrix

    from mvc_magics.adapters.sklearn import SklearnAdapter

    X = csr_matrix(DIGITS_X[:200])
    model = KNeighborsClassifier(3).fit(X, DIGITS_Y[:200])
    assert type(model._fit_X) is csr_matrix
    rebuilt = repo.checkout(repo.commit(model, "sparse").id, name="sparse")
    assert type(rebuilt._fit_X) is csr_matrix and rebuilt.predict(X).tobytes() == model.predict(X).tobytes()
    attacks = {"column index 1e9": _edit_tensor("_fit_X/indices", _set(5, 10**9)),
               "index pointer past the data": _edit_tensor("_fit_X/indptr", _set(-1, 10**9)),
               "index pointer going back": _edit_tensor("_fit_X/indptr", _set(100, 0))}
    checkouts = [(_commit_poisoned(repo, SklearnAdapter, "take_apart", poison, model, "sparse").id, "sparse",
                  "model.predict(np.ones((3, 64))); model.kneighbors(np.ones((3, 64)))")
                 for _attack, poison in sorted(attacks.items())]
    code, lines = _victims_in_child(repo.path, checkouts)
    assert code == 0, f"the victim's process died (exit {code}) after: {lines}"
    for attack, line in zip(sorted(attacks), lines, strict=True):  # by the full check, or scipy's own
        assert line.startswith("REFUSED UnsupportedModelError") and "<newline>" not in line, (attack, line)
        assert "malformed" in line or "index pointer" in line, (attack, line)


def test_text_classes_and_categories_check_out_and_crafted_text_is_refused(repo):
    """String labels and string categories (numpy text arrays) are kept in the structure, as data."""
    import json

    from sklearn.linear_model import LogisticRegression

    from mvc_magics.adapters.sklearn import SklearnAdapter

    colours = np.array(["red", "green", "blue"])[np.arange(len(IRIS_X)) % 3]
    X = np.c_[IRIS_X.astype(object), colours]
    labels = np.array(["setosa", "versicolor", "virginica"])[IRIS_Y]
    model = make_pipeline(ColumnTransformer([("scaled", StandardScaler(), [0, 1, 2, 3]),
                                             ("colour", OneHotEncoder(), [4])]),
                          LogisticRegression(max_iter=500)).fit(X, labels)
    version = repo.commit(model, "text")
    rebuilt = repo.checkout(version.id, name="text")
    assert rebuilt.predict_proba(X).tobytes() == model.predict_proba(X).tobytes()
    assert rebuilt.predict(X).tolist() == model.predict(X).tolist()
    assert rebuilt[-1].classes_.dtype == model[-1].classes_.dtype

    def longer_than_its_dtype(taken):
        text = json.dumps(taken[0]).replace('"values": ["setosa"', '"values": ["' + "s" * 500 + '"', 1)
        assert text != json.dumps(taken[0])
        return json.loads(text), taken[1]

    crafted = _commit_poisoned(repo, SklearnAdapter, "take_apart", longer_than_its_dtype, model, "text")
    with pytest.raises(UnsupportedModelError) as refused:
        repo.checkout(crafted.id, model)
    assert "malformed" in _one_line(refused.value)
    assert model.predict_proba(X).tobytes() == rebuilt.predict_proba(X).tobytes()
