"""Decision trees checked before anyone uses them: a crafted tree must not crash the kernel.

scikit-learn's tree code (``Tree.apply``, gradient boosting's ``predict_stages``) follows the stored
child and feature indices without bounds checks, so skops does not trust ``sklearn.tree._tree.Tree``
by default. Trees are what users train most, so instead of refusing them, every node array is
checked here, on the stored schema and arrays before skops builds anything, and again on the built
objects before the model is returned: the node count against the storage, children strictly after
their parent and inside the tree (a path always ends at a leaf), features inside the tree's width,
the class and value shapes, and the width each caller that skips its own check relies on (the
estimator holding the tree, gradient boosting's stages and its initial predictions). Anything else
is refused in one line.

The same walk over a rebuilt estimator checks HistGradientBoosting's predictors
(``sklearn_hist``) and nearest-neighbour trees (``sklearn_neighbors``), whose compiled code trusts
stored indices in the same way.
"""

from __future__ import annotations

import hashlib
import json
import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import UnsupportedModelError
from .sklearn_hist import hist_boosting_problem, predictor_problem
from .sklearn_neighbors import binary_tree_problem, neighbors_owner_problem

TREE = "sklearn.tree._tree.Tree"
# Sparse matrices scipy's compiled code indexes by their stored indices: checked in full here.
SPARSE_TYPES = ("scipy.sparse._csr.csr_matrix", "scipy.sparse._csc.csc_matrix", "scipy.sparse._csr.csr_array",
                "scipy.sparse._csc.csc_array")
# Wider than this, the initial-prediction probe of gradient boosting uses a sparse row.
_DENSE_PROBE = 100_000


def _refuse(problem: str) -> UnsupportedModelError:
    return UnsupportedModelError(f"the stored tree model is malformed ({problem}): refused before any use, "
                                 "the store may have been tampered with; model left unchanged.")


def tree_problem(tree: Any) -> str | None:
    """What is wrong with one built ``sklearn.tree._tree.Tree``, or None when every index is in range."""
    if int(tree.node_count) != int(tree.capacity):  # node arrays are views of `capacity` stored nodes
        return f"node_count {int(tree.node_count)} for {int(tree.capacity)} stored nodes"
    state = tree.__getstate__()
    return _problem(int(tree.node_count), int(tree.n_features), int(tree.n_outputs), np.asarray(tree.n_classes),
                    int(tree.max_depth), state["nodes"], state["values"])


def _problem(n: int, n_features: int, n_outputs: int, n_classes: np.ndarray, max_depth: int, nodes: Any,
             values: np.ndarray) -> str | None:
    """The checks of one tree's numbers and node arrays (``nodes[field]`` for each field)."""
    if n < 1 or n_features < 1 or n_outputs < 1:
        return f"{n} nodes, {n_features} features, {n_outputs} outputs"
    if n_classes.shape != (n_outputs,) or n_classes.dtype.kind not in "iu" or (n_classes < 1).any():
        return "class counts do not match the outputs"
    if not 0 <= max_depth < n:
        return f"max_depth {max_depth} for {n} nodes"
    try:
        left, right, feature = (np.asarray(nodes[f]) for f in ("left_child", "right_child", "feature"))
    except (KeyError, ValueError, IndexError):
        return "node arrays without children or features"
    if any(a.shape != (n,) or a.dtype.kind not in "iu" for a in (left, right, feature)):
        return "node arrays of the wrong shape"
    if values.shape != (n, n_outputs, int(n_classes.max())):
        return "value arrays of the wrong shape"
    left, right, feature = (a.astype(np.int64) for a in (left, right, feature))
    leaf = left == -1
    if (leaf != (right == -1)).any():
        return "a node with one child"
    at = np.arange(n)[~leaf]
    inner_left, inner_right, inner_feature = left[~leaf], right[~leaf], feature[~leaf]
    # Children after their parent: every path from the root ends at a leaf, and no index leaves the tree.
    if ((inner_left <= at) | (inner_left >= n) | (inner_right <= at) | (inner_right >= n)).any():
        return "child indices out of range"
    if ((inner_feature < 0) | (inner_feature >= n_features)).any():
        return f"feature indices outside 0..{n_features - 1}"
    return None


def check_stored_trees(schema: object, state: Mapping[str, np.ndarray]) -> None:
    """Refuse a stored skops schema before anything is built from it, unless every tree in it holds
    consistent node arrays.

    skops builds one object per ``__id__``: a later node with an id already seen is replaced by the
    first. skops writes an object it meets twice in full both times, under one id, so equal ids are
    normal; but a schema whose nodes of one id hold different data could show one tree here and
    build another, and is refused.
    """
    by_id: dict[object, list[dict]] = {}
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        stack.extend(node.values())
        ident = node.get("__id__")
        if ident is not None and node.get("__loader__") != "CachedNode":
            if not isinstance(ident, int) or isinstance(ident, bool):
                raise _refuse("an object id that is not a number")
            by_id.setdefault(ident, []).append(node)
        if _is_tree(node):
            problem = _stored_tree_problem(node, state)
            if problem:
                raise _refuse(problem)
        attributes = node.get("content", {}).get("content") if node.get("__loader__") == "ObjectNode" else None
        if isinstance(attributes, dict) and _is_tree(attributes.get("tree_")):
            problem = _stored_owner_problem(attributes)
            if problem:
                raise _refuse(problem)
    for nodes in by_id.values():
        if len(nodes) > 1 and len({_canonical(n, state) for n in nodes}) > 1:
            raise _refuse("one object id stored with two different contents")


def _canonical(node: object, state: Mapping[str, np.ndarray]) -> str:
    """``node``'s data without ids, its arrays by content: equal for two copies of one object."""
    def strip(item: object) -> object:
        if isinstance(item, list):
            return [strip(i) for i in item]
        if not isinstance(item, dict):
            return item
        out = {k: strip(v) for k, v in item.items() if k not in ("__id__", "tensor")}
        name = item.get("tensor")
        if isinstance(name, str):
            fields, sparse = item.get("fields") or [], item.get("sparse")
            names = [f"{name}/{f[0]}" for f in fields if isinstance(f, list) and f] if fields else [name]
            if isinstance(sparse, dict) and isinstance(sparse.get("parts"), list):
                names = [f"{name}/{part}" for part in sparse["parts"]]
            out["tensor"] = [_digest(state.get(n)) for n in names]
        return out

    return json.dumps(strip(node), sort_keys=True)


def _digest(array: object) -> str:
    if not isinstance(array, np.ndarray):
        return "missing"
    data = np.ascontiguousarray(array)
    return f"{data.dtype.str}{data.shape}{hashlib.blake2b(data.view(np.uint8).reshape(-1)).hexdigest()}"


def _is_tree(node: object) -> bool:
    return isinstance(node, dict) and node.get("__class__") == "Tree" and node.get("__module__") == "sklearn.tree._tree"


def _stored_owner_problem(attributes: dict) -> str | None:
    """The estimator holding a tree checks its input against its own width: they must agree."""
    try:
        width = _stored_int(attributes["n_features_in_"])
        tree_width = _stored_int(attributes["tree_"]["__reduce__"]["args"]["content"][0])
    except (KeyError, TypeError, ValueError, IndexError):
        return "a tree in an estimator without its number of features"
    if width != tree_width:
        return f"a tree of {tree_width} features in an estimator of {width}"
    return None


def _stored_tree_problem(node: dict, state: Mapping[str, np.ndarray]) -> str | None:
    if node.get("__loader__") != "TreeNode":
        return "a tree stored in a form skops does not write"
    try:
        n_features, n_classes, n_outputs = node["__reduce__"]["args"]["content"]
        content = node["content"]["content"]
        nodes = content["nodes"]
        fields = {f: np.asarray(state[f"{nodes['tensor']}/{f}"]) for f, _dtype in nodes["fields"]}
        return _problem(_stored_int(content["node_count"]), _stored_int(n_features), _stored_int(n_outputs),
                        np.asarray(state[n_classes["tensor"]]), _stored_int(content["max_depth"]), fields,
                        np.asarray(state[content["values"]["tensor"]]))
    except (KeyError, TypeError, ValueError):
        return "a tree whose stored form is incomplete"


def _stored_int(node: object) -> int:
    if not isinstance(node, dict) or node.get("__loader__") != "JsonNode" or not isinstance(node.get("content"), str):
        raise ValueError("not a stored number")
    value = json.loads(node["content"])
    if type(value) is not int:
        raise ValueError("not an integer")
    return value


def check_trees(model: Any) -> None:
    """Refuse ``model`` (an estimator just rebuilt) unless every tree in it is consistent: decision
    trees, HistGradientBoosting predictors and nearest-neighbour trees, and the estimators holding them."""
    from sklearn.ensemble._gb import BaseGradientBoosting
    from sklearn.ensemble._hist_gradient_boosting.gradient_boosting import BaseHistGradientBoosting
    from sklearn.ensemble._hist_gradient_boosting.predictor import TreePredictor
    from sklearn.neighbors import BallTree, KDTree
    from sklearn.tree._tree import Tree

    seen: set[int] = set()
    stack = [model]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, str | bytes | int | float | bool | type(None)):
            continue
        seen.add(id(obj))
        if type(obj) is Tree:
            problem = tree_problem(obj)
            if problem:
                raise _refuse(problem)
            continue
        if type(obj) in (KDTree, BallTree):
            problem = binary_tree_problem(obj)
            if problem:
                raise _refuse(problem)
            continue
        if f"{type(obj).__module__}.{type(obj).__qualname__}" in SPARSE_TYPES:
            try:
                obj.check_format(full_check=True)
            except (ValueError, TypeError) as exc:
                raise _refuse(f"a sparse matrix with indices out of range: {' '.join(str(exc).split())[:80]}") from exc
            continue
        if type(obj) is TreePredictor:  # also inside its estimator, with the width: harmless alone
            problem = predictor_problem(obj)
            if problem:
                raise _refuse(problem)
        if isinstance(obj, np.ndarray):
            if obj.dtype == object:
                stack.extend(obj.ravel().tolist())
            continue
        if isinstance(obj, dict):
            stack.extend(obj.values())
            continue
        if isinstance(obj, list | tuple | set | frozenset):
            stack.extend(obj)
            continue
        attributes = getattr(obj, "__dict__", None)
        if not isinstance(attributes, dict):
            continue
        tree = attributes.get("tree_")
        if type(tree) is Tree and attributes.get("n_features_in_") != int(tree.n_features):
            raise _refuse(f"a tree of {int(tree.n_features)} features in an estimator of "
                          f"{attributes.get('n_features_in_')!r}")
        if isinstance(obj, BaseGradientBoosting) and "estimators_" in attributes:
            _check_boosting(obj, Tree)
        problem = (hist_boosting_problem(obj) if isinstance(obj, BaseHistGradientBoosting) else
                   neighbors_owner_problem(attributes, attributes["_tree"])
                   if type(attributes.get("_tree")) in (KDTree, BallTree) else None)
        if problem:
            raise _refuse(problem)
        stack.extend(attributes.values())


def _check_boosting(model: Any, tree_type: type) -> None:
    """Gradient boosting hands every stage's ``tree_`` to compiled code with the rows it validated
    against the first stage: every stage must be a tree of that width, and as many per stage as
    the initial predictions have columns."""
    from sklearn.tree import DecisionTreeRegressor

    stages, width = model.estimators_, model.__dict__.get("n_features_in_")
    if not isinstance(stages, np.ndarray) or stages.dtype != object or stages.ndim != 2 or stages.size == 0:
        raise _refuse("gradient boosting stages are not a table of trees")
    if not isinstance(width, numbers.Integral) or width < 1:
        raise _refuse("gradient boosting without its number of features")
    for stage in stages.ravel().tolist():
        tree = getattr(stage, "tree_", None)
        if (type(stage) is not DecisionTreeRegressor or type(tree) is not tree_type
                or int(tree.n_features) != width or stage.__dict__.get("n_features_in_") != width):
            raise _refuse("a gradient boosting stage that is not a regression tree of the model's width")
        problem = tree_problem(tree)
        if problem:
            raise _refuse(problem)
    if width <= _DENSE_PROBE:
        probe = np.zeros((1, width))
    else:
        from scipy.sparse import csr_matrix

        probe = csr_matrix((1, width))
    try:
        raw = model._raw_predict_init(probe)
    except Exception as exc:
        raise _refuse(f"its initial prediction fails: {type(exc).__name__}") from exc
    if not isinstance(raw, np.ndarray) or raw.shape != (1, stages.shape[1]):
        raise _refuse("initial predictions and trees per stage differ in number")
