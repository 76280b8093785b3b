"""HistGradientBoosting checked before anyone uses it: a crafted predictor must not crash the kernel.

``HistGradientBoostingClassifier``/``Regressor`` predict through ``TreePredictor`` objects whose
``nodes`` record array compiled code walks without bounds checks: a child index outside the array,
a feature index outside the row, a categorical split's bitset row past the bitset array, or a
known-categories row the bin mapper does not have reads (and may crash on) memory it does not own;
a child that points back at an ancestor loops forever. Each rebuilt predictor must therefore be a
proper binary tree (every node but the root the child of exactly one node, children after their
parent), with every index in range; the estimator holding the predictors must agree on the row
width, on the number of trees per iteration and on which features are categorical. skops does not
trust ``TreePredictor`` for these reasons; with these checks, it is rebuilt without ``unsafe``.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

PREDICTOR = "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"
_BITSET_WIDTH = 8  # uint32 words per categorical bitset: 256 bins
_MAX_BIN = 255  # categories are binned as uint8


def predictor_problem(predictor: Any, width: int | None = None, categorical: np.ndarray | None = None) -> str | None:
    """What is wrong with one built ``TreePredictor`` (for rows of ``width`` features, of which
    ``categorical`` are categorical, when known), or None."""
    from sklearn.ensemble._hist_gradient_boosting.common import PREDICTOR_RECORD_DTYPE

    attributes = getattr(predictor, "__dict__", {})
    nodes = attributes.get("nodes")
    if not isinstance(nodes, np.ndarray) or nodes.dtype != PREDICTOR_RECORD_DTYPE or nodes.ndim != 1 or not nodes.size:
        return "predictor nodes that are not a list of node records"
    bitsets = [attributes.get("binned_left_cat_bitsets"), attributes.get("raw_left_cat_bitsets")]
    if any(not isinstance(b, np.ndarray) or b.dtype != np.uint32 or b.ndim != 2 or b.shape[1] != _BITSET_WIDTH
           for b in bitsets):
        return "categorical bitsets of the wrong shape"
    n = nodes.size
    inner = np.flatnonzero(nodes["is_leaf"] == 0)
    left, right = nodes["left"][inner].astype(np.int64), nodes["right"][inner].astype(np.int64)
    if ((left <= inner) | (left >= n) | (right <= inner) | (right >= n)).any():
        return "child indices out of range"
    children = np.concatenate([left, right])
    if children.size != n - 1 or (np.bincount(children, minlength=n)[1:] != 1).any():
        return "nodes that are not a tree (a node with two parents, or none)"
    feature = nodes["feature_idx"][inner]
    if (feature < 0).any() or (width is not None and (feature >= width).any()):
        return f"feature indices outside 0..{width - 1 if width else '?'}"
    split_on_category = nodes["is_categorical"][inner] != 0
    if split_on_category.any():
        rows = nodes["bitset_idx"][inner][split_on_category].astype(np.int64)
        if (rows >= min(b.shape[0] for b in bitsets)).any():
            return "a categorical split past its bitsets"
        if categorical is not None and not categorical[feature[split_on_category]].all():
            return "a categorical split on a numerical feature"
    return None


def hist_boosting_problem(model: Any) -> str | None:
    """What is wrong with a built HistGradientBoosting estimator's predictors and bin mapper, or None."""
    from sklearn.ensemble._hist_gradient_boosting.binning import _BinMapper
    from sklearn.ensemble._hist_gradient_boosting.predictor import TreePredictor

    attributes = model.__dict__
    if "_predictors" not in attributes:
        return None  # not fitted: nothing compiled runs on it
    if attributes.get("_in_fit", False) is not False:
        return "an estimator stored in the middle of its fit"
    width, per_iteration = attributes.get("n_features_in_"), attributes.get("n_trees_per_iteration_")
    if not _count(width) or not _count(per_iteration):
        return "gradient boosting without its number of features or trees per iteration"
    if attributes.get("_preprocessor") is not None and not _sklearn_preprocessor(attributes["_preprocessor"], width):
        return "a categorical preprocessor that is not the one scikit-learn builds"
    mapper = attributes.get("_bin_mapper")
    if type(mapper) is not _BinMapper:
        return "gradient boosting without its bin mapper"
    categorical = _categorical_features(mapper.__dict__, width)
    if categorical is None:
        return "a bin mapper that does not match the number of features"
    predictors = attributes.get("_predictors")
    if not isinstance(predictors, list) or any(not isinstance(p, list) or len(p) != per_iteration for p in predictors):
        return "predictors that are not a list of iterations of one tree per output"
    for predictor in (p for iteration in predictors for p in iteration):
        if type(predictor) is not TreePredictor:
            return "a predictor that is not a TreePredictor"
        problem = predictor_problem(predictor, width, categorical)
        if problem:
            return problem
    baseline = attributes.get("_baseline_prediction")
    if not isinstance(baseline, np.ndarray) or baseline.shape != (1, per_iteration):
        return "baseline predictions and trees per iteration differ in number"
    return None


def _count(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1


def _categorical_features(mapper: dict, width: int) -> np.ndarray | None:
    """The bin mapper's categorical mask, if it describes rows of ``width`` features consistently."""
    mask, thresholds = mapper.get("is_categorical_"), mapper.get("bin_thresholds_")
    if not isinstance(mask, np.ndarray) or mask.shape != (width,) or mask.dtype.kind not in "biu":
        return None
    if not isinstance(thresholds, list) or len(thresholds) != width:
        return None
    categorical = mask != 0
    for is_categorical, known in zip(categorical.tolist(), thresholds, strict=True):
        if not isinstance(known, np.ndarray) or known.ndim != 1 or known.dtype.kind != "f":
            return None
        # Known categories become bits of a 256-bit set: each must be a bin number.
        if is_categorical and not (np.isfinite(known).all() and (known == np.round(known)).all()
                                   and ((known >= 0) & (known <= _MAX_BIN)).all()):
            return None
    return categorical


def _sklearn_preprocessor(preprocessor: Any, width: int) -> bool:
    """True for the ColumnTransformer HistGradientBoosting builds for categorical features: an
    OrdinalEncoder on the categorical columns and the rest passed through, ``width`` columns out."""
    from functools import partial

    from sklearn.compose import ColumnTransformer
    from sklearn.preprocessing import FunctionTransformer, OrdinalEncoder
    from sklearn.utils.validation import check_array

    if type(preprocessor) is not ColumnTransformer or preprocessor.__dict__.get("n_features_in_") != width:
        return False
    fitted = [t for t in preprocessor.__dict__.get("transformers_", [])
              if not (isinstance(t, tuple) and len(t) == 3 and isinstance(t[1], str) and t[1] == "drop")]
    if len(fitted) != 2 or any(not isinstance(t, tuple) or len(t) != 3 for t in fitted):
        return False
    (_, encoder, encoded), (_, passed, rest) = fitted
    function = getattr(passed, "func", None)
    if (type(encoder) is not OrdinalEncoder or type(passed) is not FunctionTransformer
            or type(function) is not partial or function.func is not check_array or function.args):
        return False
    masks = [np.asarray(encoded), np.asarray(rest)]
    if any(m.dtype != bool or m.shape != (width,) for m in masks) or (masks[0] == masks[1]).any():
        return False
    return encoder.__dict__.get("n_features_in_") == int(masks[0].sum())
