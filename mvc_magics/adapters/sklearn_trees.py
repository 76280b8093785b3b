"""Decision trees checked before anyone uses them: a crafted tree must not crash the kernel.

scikit-learn's tree code (``Tree.apply``, gradient boosting's ``predict_stages``) follows the stored
child and feature indices without bounds checks, so skops does not trust ``sklearn.tree._tree.Tree``
by default. Trees are what users train most, so instead of refusing them, every node array is
checked here: the node count against the storage, children strictly after their parent and inside
the tree (a path always ends at a leaf), features inside the tree's width, the class and value
shapes, and the width each caller that skips its own check relies on (the estimator holding the tree,
gradient boosting's stages and its initial predictions). Anything else is refused in one line.

HistGradientBoosting's ``TreePredictor`` is not checked here and stays untrusted, as in skops.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from ..errors import UnsupportedModelError

TREE = "sklearn.tree._tree.Tree"
# Wider than this, the initial-prediction probe of gradient boosting uses a sparse row.
_DENSE_PROBE = 100_000


def _refuse(problem: str) -> UnsupportedModelError:
    return UnsupportedModelError(f"the stored tree model is malformed ({problem}): refused before any use, "
                                 "the store may have been tampered with; model left unchanged.")


def tree_problem(tree: Any) -> str | None:
    """What is wrong with one ``sklearn.tree._tree.Tree``, or None when every index is in range."""
    n = int(tree.node_count)
    if n < 1 or n != int(tree.capacity):  # node arrays are views of `capacity` stored nodes
        return f"node_count {n} for {int(tree.capacity)} stored nodes"
    n_features, n_outputs = int(tree.n_features), int(tree.n_outputs)
    if n_features < 1 or n_outputs < 1:
        return f"{n_features} features, {n_outputs} outputs"
    n_classes = np.asarray(tree.n_classes)
    if n_classes.shape != (n_outputs,) or (n_classes < 1).any() or int(n_classes.max()) != int(tree.max_n_classes):
        return "class counts do not match the outputs"
    if not 0 <= int(tree.max_depth) < n:
        return f"max_depth {int(tree.max_depth)} for {n} nodes"
    state = tree.__getstate__()
    nodes, values = state["nodes"], state["values"]
    if nodes.shape != (n,) or values.shape != (n, n_outputs, int(tree.max_n_classes)):
        return "node or value arrays of the wrong shape"
    left, right, feature = (np.asarray(nodes[f], np.int64) for f in ("left_child", "right_child", "feature"))
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


def check_trees(model: Any) -> None:
    """Refuse ``model`` (an estimator just rebuilt) unless every tree in it is consistent."""
    from sklearn.ensemble._gb import BaseGradientBoosting
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
