"""Adapter for scikit-learn estimators and pipelines, without pickle.

skops (``skops.io``) already knows how to take an estimator apart into plain data: a JSON schema of
classes and hyper-parameters plus numpy arrays. This adapter uses that schema as the version's
structure and the arrays as its tensors, named by their path in the estimator (``coef_``,
``steps/1/1/coef_``, ``estimators_/0/tree_/nodes/threshold``), so diff, compare and merge see every
fitted array. Record arrays (a tree's ``nodes``) are stored one tensor per field. Rebuilding goes
back through ``skops.io.loads`` with an allow-list: scikit-learn, numpy and scipy types are
trusted; anything else needs ``unsafe=True`` or the class in ``classes=``. Nothing is unpickled.
"""

from __future__ import annotations

import io
import json
import re
import sys
import weakref
import zipfile
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from ..errors import MergeConflictError, ShapeMismatchError, UnsupportedModelError
from .base import match_state
from .sklearn_hist import PREDICTOR
from .sklearn_neighbors import METRIC_TYPES, TREE_TYPES
from .sklearn_trees import SPARSE_TYPES, TREE, check_stored_trees, check_trees
from .trust import EMPTY, AllowList, TrustPolicy, qualified_name, shown

STRUCTURE_FORMAT = "sklearn.skops/1"
# Types skops leaves out of its defaults that fitted estimators hold and that run no stored code:
# a Bunch (a dict), a dtype, MLP's optimizer state.
EXTRA_TYPES = AllowList(["sklearn.utils._bunch:Bunch", "numpy:dtype",
                         "sklearn.neural_network._stochastic_optimizers:AdamOptimizer",
                         "sklearn.neural_network._stochastic_optimizers:SGDOptimizer"])
# Types skops leaves out because compiled code trusts their stored indices: trusted here only because
# check_stored_trees and check_trees validate every one of them before the model is returned
# (decision trees, HistGradientBoosting predictors, nearest-neighbour trees and their distances,
# CSR/CSC sparse matrices: every index checked by scipy's full format check).
CHECKED_TYPES = AllowList([":".join(path.rsplit(".", 1))
                           for path in (TREE, PREDICTOR, *TREE_TYPES, *METRIC_TYPES, *SPARSE_TYPES)])
# Averaging weights means something only for linear models fitted on the same features.
LINEAR_MODELS = frozenset({
    "LinearRegression", "Ridge", "RidgeClassifier", "Lasso", "ElasticNet", "LogisticRegression",
    "SGDClassifier", "SGDRegressor", "Perceptron", "PassiveAggressiveClassifier", "PassiveAggressiveRegressor",
    "HuberRegressor", "BayesianRidge", "LinearSVC", "LinearSVR", "Pipeline",
})


def _skops_io():
    import skops.io

    return skops.io


class SklearnAdapter:
    """scikit-learn estimators (anything deriving ``sklearn.base.BaseEstimator``), pipelines included."""

    framework = "sklearn"

    def __init__(self) -> None:
        # model -> structure taken apart with the last get_state, so a commit serializes once.
        self._taken: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def handles(self, obj: object) -> bool:
        if "sklearn" not in sys.modules:
            return False
        from sklearn.base import BaseEstimator

        return isinstance(obj, BaseEstimator) and not isinstance(obj, type)

    # -- taking an estimator apart ----------------------------------------------------------------

    def take_apart(self, model: Any) -> tuple[dict, dict[str, np.ndarray]]:
        """(structure, tensors) of ``model`` through skops' schema; refuses unfitted estimators."""
        from sklearn.exceptions import NotFittedError
        from sklearn.utils.validation import check_is_fitted

        try:
            check_is_fitted(model)
        except NotFittedError as exc:
            raise UnsupportedModelError(f"the {type(model).__name__} is not fitted yet: fit it first") from exc
        except TypeError:  # not an estimator check_is_fitted understands: version what skops sees
            pass
        try:
            data = _skops_io().dumps(model)
        except Exception as exc:
            what = type(model).__name__
            raise UnsupportedModelError(f"skops cannot take this {what} apart: {str(exc)[:200]}") from exc
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            schema = json.loads(archive.read("schema.json"))
            arrays = {n: np.load(io.BytesIO(archive.read(n)), allow_pickle=False)
                      for n in archive.namelist() if n.endswith(".npy")}
            sparse = {n: dict(np.load(io.BytesIO(archive.read(n)), allow_pickle=False))
                      for n in archive.namelist() if n.endswith(".npz")}  # scipy sparse matrices
        tensors: dict[str, np.ndarray] = {}
        ids: dict[object, int] = {}

        def walk(node: Any, path: str) -> None:
            if isinstance(node, dict):
                if "__id__" in node:  # memory addresses: renumbered so equal content gives one id
                    node["__id__"] = ids.setdefault(node["__id__"], len(ids))
                file = node.pop("file", None)
                if isinstance(file, str) and file in arrays and arrays[file].dtype.kind == "U":
                    # Text (string classes, categories): the store keeps numbers, so it stays in the structure.
                    array = arrays[file]
                    node["strings"] = {"dtype": array.dtype.str, "shape": list(array.shape),
                                       "values": array.ravel().tolist()}
                elif isinstance(file, str) and file in arrays:
                    array, name = arrays[file], _unique(path or "value", tensors)
                    if array.ndim > 1 and not array.flags.c_contiguous:  # (tensors are C-ordered bytes)
                        node["order"] = "F"  # lbfgs' coef_: predictions are bit-identical only in it
                    if array.dtype.names:
                        node["tensor"], node["fields"] = name, [[f, array.dtype[f].str] for f in array.dtype.names]
                        for field in array.dtype.names:
                            tensors[f"{name}/{field}"] = np.ascontiguousarray(array[field])
                    else:
                        node["tensor"] = name
                        tensors[name] = array
                elif isinstance(file, str) and file in sparse:  # its arrays as tensors, format and shape as data
                    parts, name = sparse[file], _unique(path or "value", tensors)
                    node["tensor"] = name
                    node["sparse"] = {"format": parts.pop("format").item().decode("ascii"),
                                      "shape": [int(n) for n in parts.pop("shape")], "parts": sorted(parts)}
                    tensors.update({f"{name}/{part}": array for part, array in parts.items()})
                for key, value in node.items():
                    if key == "content" and isinstance(value, dict) and node.get("__loader__") == "DictNode":
                        for k, v in value.items():
                            walk(v, f"{path}/{k}" if path else str(k))
                    elif key == "content":
                        walk(value, path)
                    elif isinstance(value, dict | list):  # __reduce__ arguments, key types...
                        walk(value, path if key in ("__reduce__", "args") else f"{path}/{key}" if path else key)
            elif isinstance(node, list):
                for i, item in enumerate(node):
                    walk(item, f"{path}/{i}" if path else str(i))

        walk(schema, "")
        return {"format": STRUCTURE_FORMAT, "schema": schema, "class": qualified_name(type(model))}, tensors

    def get_state(self, model: Any) -> dict[str, np.ndarray]:
        structure, tensors = self.take_apart(model)
        if not tensors:
            raise UnsupportedModelError(f"the {type(model).__name__} has no fitted arrays to version")
        try:
            self._taken[model] = structure
        except TypeError:
            pass
        return tensors

    def structure(self, model: Any) -> object | None:
        taken = self._taken.pop(model, None) if _weakrefable(model) else None
        return taken if taken is not None else self.take_apart(model)[0]

    # -- putting it back together ------------------------------------------------------------------

    def build(self, structure: object, state: Mapping[str, np.ndarray], unsafe: bool = False,
              classes: Iterable[type] = ()) -> Any:
        if not isinstance(structure, dict) or structure.get("format") != STRUCTURE_FORMAT:
            raise UnsupportedModelError("this version has no scikit-learn structure")
        schema = json.loads(json.dumps(structure["schema"]))
        files: dict[str, bytes] = {}
        expected = _expected_tensors(schema)
        missing = sorted(set(expected) - set(state))
        if missing:
            raise ShapeMismatchError(f"the version lacks tensors {', '.join(missing[:3])}")

        def walk(node: Any) -> None:
            if isinstance(node, dict):
                name = node.pop("tensor", None)
                sparse, strings = node.pop("sparse", None), node.pop("strings", None)
                if strings is not None:
                    file = f"{len(files)}.npy"
                    buffer = io.BytesIO()
                    np.save(buffer, _string_array(strings), allow_pickle=False)
                    files[file], node["file"] = buffer.getvalue(), file
                elif isinstance(name, str) and sparse is not None:
                    file = f"{len(files)}.npz"
                    files[file], node["file"] = _sparse_file(name, sparse, state), file
                elif isinstance(name, str):
                    fields = node.pop("fields", None)
                    if fields:
                        parts = [np.asarray(state[f"{name}/{f}"]) for f, _ in fields]
                        array = np.empty(parts[0].shape, np.dtype([(f, d) for f, d in fields]))
                        for (field, _), part in zip(fields, parts, strict=True):
                            array[field] = part
                    else:
                        array = np.asarray(state[name])
                    if node.pop("order", None) == "F":
                        array = np.asfortranarray(array)
                    file = f"{len(files)}.npy"
                    buffer = io.BytesIO()
                    np.save(buffer, array, allow_pickle=False)
                    files[file], node["file"] = buffer.getvalue(), file
                for value in node.values():
                    walk(value)
            elif isinstance(node, list):
                for item in node:
                    walk(item)

        check_stored_trees(schema, state)  # before skops builds any tree from it
        walk(schema)
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as archive:
            archive.writestr("schema.json", json.dumps(schema))
            for file, data in files.items():
                archive.writestr(file, data)
        data = out.getvalue()
        sio = _skops_io()
        policy = TrustPolicy(EMPTY, unsafe, classes)
        try:
            needed = sio.get_untrusted_types(data=data)
        except Exception as exc:
            raise UnsupportedModelError(f"cannot read the stored estimator: {shown(exc, 200)}") from exc
        # Exact names only: skops' defaults, checked types (checked below), the classes the user passed.
        refused = [t for t in needed if not (unsafe or policy.given_exactly(t) or EXTRA_TYPES.resolve(t) is not None
                                             or CHECKED_TYPES.resolve(t) is not None)]
        if refused:
            raise UnsupportedModelError(
                f"rebuilding needs {shown(', '.join(sorted(refused)[:3]), 200)}, not on the trusted list: pass "
                "those classes in classes=[...] (or unsafe=True / --unsafe if you trust this store)"
            )
        try:
            model = sio.loads(data, trusted=list(needed))
        except Exception as exc:
            raise UnsupportedModelError(f"cannot rebuild the estimator: {shown(exc, 200)}") from exc
        check_trees(model)
        return model

    def set_state(self, model: Any, state: Mapping[str, np.ndarray], owned: bool = False) -> None:
        """Fitted arrays from ``state`` into ``model``, keeping its other attributes (a merge into it)."""
        structure, tensors = self.take_apart(model)
        match_state({k: (a.shape, a.dtype.name) for k, a in tensors.items()}, state)
        self.load_version(model, structure, state)

    def load_version(self, model: Any, structure: object, state: Mapping[str, np.ndarray]) -> Any:
        """Make ``model`` the stored version: rebuilt completely first, then swapped in (all or nothing).

        An estimator's fitted state is its ``__dict__``; nested estimators (pipeline steps) become
        the rebuilt ones, so references to the old steps keep the old state.
        """
        rebuilt = self.build(structure, state)
        if type(rebuilt) is not type(model):
            raise ShapeMismatchError(f"the version is a {type(rebuilt).__name__}, the variable a "
                                     f"{type(model).__name__}: model left unchanged")
        model.__dict__.clear()
        model.__dict__.update(rebuilt.__dict__)
        return model

    # -- merge, ensembles, export ------------------------------------------------------------------

    def average_refusal(self, structure: object) -> str | None:
        """Why the weights of versions with ``structure`` cannot be averaged, or None if they can."""
        others = sorted({c for c in _classes(structure) if c not in LINEAR_MODELS})
        if others:
            return (f"averaging is meaningful only for linear models on the same features, not "
                    f"{', '.join(others[:3])}: use method='ensemble' (a VotingClassifier/VotingRegressor) instead")
        return None

    def ensemble(self, members: list[Any], weights: list[float], method: str) -> Any:
        """A fitted VotingClassifier (soft when every member has predict_proba and method is
        ``ensemble``; hard for ``vote``) or VotingRegressor over the members, without refitting."""
        from sklearn.base import is_classifier, is_regressor
        from sklearn.ensemble import VotingClassifier, VotingRegressor
        from sklearn.preprocessing import LabelEncoder
        from sklearn.utils import Bunch

        named = [(f"member_{i}", m) for i, m in enumerate(members)]
        if all(is_classifier(m) for m in members):
            classes = [np.asarray(m.classes_) for m in members]
            if any(c.shape != classes[0].shape or (c != classes[0]).any() for c in classes[1:]):
                raise MergeConflictError("the classifiers were fitted on different classes")
            soft = method == "ensemble" and all(hasattr(m, "predict_proba") for m in members)
            model = VotingClassifier(named, voting="soft" if soft else "hard", weights=weights)
            model.le_ = LabelEncoder().fit(classes[0])
            model.classes_ = model.le_.classes_
        elif all(is_regressor(m) for m in members) and method == "ensemble":
            model = VotingRegressor(named, weights=weights)
        else:
            raise MergeConflictError("an ensemble needs all classifiers (ensemble or vote) or all regressors "
                                     "(ensemble)")
        model.estimators_ = list(members)
        model.named_estimators_ = Bunch(**dict(named))
        return model

    export_formats = ("skops",)

    def export(self, structure: object, state: Mapping[str, np.ndarray], path: str, fmt: str) -> None:
        """A ``.skops`` file: load it with ``skops.io.load(path, trusted=skops.io.get_untrusted_types(file=path))``."""
        _skops_io().dump(self.build(structure, state), path)

    # -- metadata ----------------------------------------------------------------------------------

    def extra_metadata(self, model: Any) -> dict:
        return {"sklearn": {"class": qualified_name(type(model))}}

    def fit_metrics(self, model: Any) -> dict[str, float]:
        return {}

    def library_versions(self) -> dict[str, str]:
        import sklearn

        return {"sklearn": sklearn.__version__, "skops": _skops_version()}


def _skops_version() -> str:
    from importlib.metadata import version

    return version("skops")


def _weakrefable(obj: object) -> bool:
    try:
        weakref.ref(obj)
    except TypeError:
        return False
    return True


def _unique(name: str, taken: Mapping[str, object]) -> str:
    unique, n = name, 1
    while unique in taken or any(k.startswith(unique + "/") for k in taken):
        n += 1
        unique = f"{name}#{n}"
    return unique


def _expected_tensors(schema: object) -> list[str]:
    found, stack = [], [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            name = node.get("tensor")
            if isinstance(name, str):
                found.extend(_tensor_names(node))
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


def _tensor_names(node: dict) -> list[str]:
    """The tensors a schema node with a ``tensor`` holds: one, one per record field, or one per sparse part."""
    name, fields, sparse = node["tensor"], node.get("fields") or [], node.get("sparse")
    if isinstance(sparse, dict) and isinstance(sparse.get("parts"), list):
        return [f"{name}/{part}" for part in sparse["parts"]]
    return [f"{name}/{f}" for f, _ in fields] if fields else [name]


_TEXT_DTYPE = re.compile(r"^[<>|=]U[0-9]{1,5}$")


def _string_array(strings: object) -> np.ndarray:
    """A stored text array (dtype, shape, values) back as numpy, or one line saying it is malformed."""
    ok = (isinstance(strings, dict) and isinstance(strings.get("dtype"), str) and _TEXT_DTYPE.match(strings["dtype"])
          and isinstance(strings.get("shape"), list) and all(type(n) is int and n >= 0 for n in strings["shape"])
          and isinstance(strings.get("values"), list) and all(isinstance(v, str) for v in strings["values"])
          and len(strings["values"]) == int(np.prod(strings["shape"], dtype=np.int64)))
    if not ok:
        raise UnsupportedModelError("a stored text array of the estimator is malformed; model left unchanged")
    dtype = np.dtype(strings["dtype"])
    if any(len(v) > dtype.itemsize // 4 for v in strings["values"]):
        raise UnsupportedModelError("a stored text array of the estimator is malformed; model left unchanged")
    return np.array(strings["values"], dtype=dtype).reshape(strings["shape"])


def _sparse_file(name: str, sparse: object, state: Mapping[str, np.ndarray]) -> bytes:
    """The ``.npz`` scipy's ``save_npz`` writes, from a stored sparse matrix's format, shape and parts."""
    if not (isinstance(sparse, dict) and isinstance(sparse.get("format"), str) and len(sparse["format"]) <= 8
            and sparse["format"].isascii() and sparse["format"].isalpha()
            and isinstance(sparse.get("shape"), list) and len(sparse["shape"]) == 2
            and all(type(n) is int and n >= 0 for n in sparse["shape"])
            and isinstance(sparse.get("parts"), list) and all(isinstance(p, str) for p in sparse["parts"])
            and not {"format", "shape"} & set(sparse["parts"])):
        raise UnsupportedModelError(f"the stored sparse matrix {shown(name)} is malformed; model left unchanged")
    buffer = io.BytesIO()
    np.savez(buffer, format=np.array(sparse["format"].encode("ascii")), shape=np.array(sparse["shape"]),
             **{part: np.asarray(state[f"{name}/{part}"]) for part in sparse["parts"]})
    return buffer.getvalue()


def _classes(structure: object) -> set[str]:
    """Estimator class names in a stored structure (skops ObjectNodes)."""
    found, stack = set(), [structure.get("schema") if isinstance(structure, dict) else None]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if node.get("__loader__") == "ObjectNode" and str(node.get("__module__", "")).startswith("sklearn."):
                found.add(str(node.get("__class__")))
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found
