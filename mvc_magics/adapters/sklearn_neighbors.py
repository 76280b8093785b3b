"""Nearest-neighbour trees checked before anyone uses them: a crafted tree must not crash the kernel.

``KDTree`` and ``BallTree`` (the ``_tree`` of KNeighbors*, RadiusNeighbors*, NearestNeighbors,
LocalOutlierFactor; KernelDensity's ``tree_``) are queried by compiled code that trusts every
stored number: a point index outside the data, a node range that overlaps another (a radius query
then writes past its buffer), a child past the node array, node bounds or a distance's weights
narrower than a row, or no distance object at all. Their layout is fixed by the number of points
and of nodes: node ``i`` has children ``2i+1`` and ``2i+2``, the root holds every point, and a node
splits its range at the middle. So the node ranges and leaf flags are recomputed here from those
two numbers and must match exactly; the point index must be a permutation; every array must have
the shape the query code assumes; the distance must be one of scikit-learn's own, with weights that
fit the rows. skops does not trust these classes; with these checks they are rebuilt without
``unsafe``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

TREE_TYPES = ("sklearn.neighbors._kd_tree.KDTree", "sklearn.neighbors._ball_tree.BallTree")
# Distances whose compiled code reads only the two rows (and ``p``): nothing stored sized by them.
_PLAIN_METRICS = ("Euclidean", "Manhattan", "Chebyshev", "Hamming", "Canberra", "BrayCurtis", "Jaccard",
                  "Matching", "Dice", "Kulsinski", "RogersTanimoto", "RussellRao", "SokalMichener", "SokalSneath")
METRIC_TYPES = tuple(f"sklearn.metrics._dist_metrics.{name}Distance64"
                     for name in (*_PLAIN_METRICS, "Minkowski", "SEuclidean", "Mahalanobis", "Haversine"))
_MAX_LEVELS = 48


def _metric_problem(metric: Any, width: int) -> str | None:
    from sklearn.metrics import _dist_metrics

    full = type(metric).__name__
    if f"sklearn.metrics._dist_metrics.{full}" not in METRIC_TYPES or type(metric) is not getattr(_dist_metrics, full):
        return "a distance that is not one of scikit-learn's own"
    name = full.removesuffix("Distance64")
    p, vec, mat = metric.__getstate__()[:3]
    if not (math.isfinite(p) and p > 0) and name != "Chebyshev":
        return "a distance with an invalid p"
    if name == "Minkowski" and vec.shape[0] not in (0, width):
        return "Minkowski weights that do not fit the rows"
    if name == "SEuclidean" and vec.shape[0] != width:
        return "SEuclidean variances that do not fit the rows"
    if name == "Mahalanobis" and mat.shape != (width, width):
        return "a Mahalanobis matrix that does not fit the rows"
    if name == "Haversine" and width != 2:
        return "a haversine distance on rows that are not (latitude, longitude)"
    return None


def expected_nodes(n_points: int, n_nodes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(reached, idx_start, idx_end, is_leaf) of each node, as scikit-learn's build lays them out."""
    start, end = np.zeros(n_nodes, np.int64), np.zeros(n_nodes, np.int64)
    leaf, reached = np.zeros(n_nodes, bool), np.zeros(n_nodes, bool)
    level = np.array([0])
    end[0], reached[0] = n_points, True
    while level.size:
        first_child = 2 * level + 1
        is_leaf = (first_child >= n_nodes) | (end[level] - start[level] < 2)
        leaf[level] = is_leaf
        parents = level[~is_leaf]
        middle = start[parents] + (end[parents] - start[parents]) // 2
        left, right = 2 * parents + 1, 2 * parents + 2
        start[left], end[left], start[right], end[right] = start[parents], middle, middle, end[parents]
        level = np.concatenate([left, right])
        reached[level] = True
    return reached, start, end, leaf


def binary_tree_problem(tree: Any) -> str | None:
    """What is wrong with one built KDTree or BallTree, or None when every index is in range."""
    state = tree.__getstate__()
    data, index, nodes, bounds = state[:4]
    n_levels, n_nodes, metric, weights = state[5], state[6], state[11], state[12]
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[0] < 1 or data.shape[1] < 1:
        return "tree data that is not a table of points"
    n_points, width = data.shape
    if not 1 <= n_levels <= _MAX_LEVELS or n_nodes != 2 ** n_levels - 1:
        return f"{n_nodes} nodes on {n_levels} levels"
    if index.shape != (n_points,) or (index < 0).any() or (index >= n_points).any() \
            or (np.bincount(index, minlength=n_points) != 1).any():
        return "a point index that is not a permutation of the points"
    if nodes.shape != (n_nodes,):
        return f"{nodes.shape[0]} node records for {n_nodes} nodes"
    corners = 2 if type(tree).__name__ == "KDTree" else 1  # KD: lower and upper bounds; ball: centroid
    if bounds.shape != (corners, n_nodes, width):
        return "node bounds of the wrong shape"
    reached, start, end, leaf = expected_nodes(n_points, n_nodes)
    if ((nodes["idx_start"] != start) | (nodes["idx_end"] != end) | ((nodes["is_leaf"] != 0) != leaf))[reached].any():
        return "node ranges that do not split the points as scikit-learn does"
    if metric is None:
        return "a tree without its distance"
    problem = _metric_problem(metric, width)
    if problem:
        return problem
    if weights is not None and np.shape(weights) != (n_points,):
        return "sample weights that do not match the points"
    return None


def neighbors_owner_problem(attributes: dict, tree: Any) -> str | None:
    """An estimator's ``_tree`` must hold the points it was fitted on (``_fit_X``)."""
    fitted = attributes.get("_fit_X")
    data = tree.__getstate__()[0]
    if fitted is not None and (not hasattr(fitted, "shape") or tuple(fitted.shape) != data.shape):
        return "a neighbour tree over other points than the estimator's"
    if "n_samples_fit_" in attributes and attributes["n_samples_fit_"] != data.shape[0]:
        return "a neighbour tree over other points than the estimator's"
    return None
