"""A LightGBM text model checked line by line before LightGBM parses it.

LightGBM parses the trees of a model in parallel, at the offsets the header's ``tree_sizes`` gives;
an error inside that loop calls ``std::terminate`` (the kernel dies), and a tree line without ``=``
or arrays shorter than ``num_leaves`` say are read past their end. So a stored model is accepted
only in the shape LightGBM itself writes (``Booster.model_to_string``): a header whose counts
agree (features, classes, trees per iteration, one size per tree, each the tree's exact length),
and trees whose arrays have the lengths ``num_leaves`` implies, whose children point forward inside
the tree, whose features exist and whose categorical splits and linear leaves index only what is
stored. Anything else is refused with one line before LightGBM sees the text.
"""

from __future__ import annotations

import itertools
import re

from ..errors import UnsupportedModelError

_INT = re.compile(r"-?\d{1,19}")
_FLOAT = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?|[-+]?(inf|nan|infinity)", re.I)
_TREE_HEADER = re.compile(r"Tree=(\d+)\n")
_PARAMETER = re.compile(r"\[\w+: [^:]*\]")
# Keys LightGBM writes for one tree; it reads at most 22 lines of them.
_TREE_KEYS = frozenset({
    "num_leaves", "num_cat", "split_feature", "split_gain", "threshold", "decision_type", "left_child",
    "right_child", "leaf_value", "leaf_weight", "leaf_count", "internal_value", "internal_weight",
    "internal_count", "cat_boundaries", "cat_threshold", "is_linear", "leaf_const", "num_features",
    "leaf_features", "leaf_coeff", "shrinkage"})
_PER_LEAF = ("leaf_value", "leaf_weight", "leaf_count")
_PER_SPLIT = ("split_feature", "split_gain", "threshold", "decision_type", "left_child", "right_child",
              "internal_value", "internal_weight", "internal_count")
_INT_KEYS = frozenset({"split_feature", "decision_type", "left_child", "right_child", "leaf_count",
                       "internal_count", "cat_boundaries", "cat_threshold", "num_features", "leaf_features"})
_MULTICLASS = ("multiclass", "softmax", "multiclassova", "multiclass_ova", "ova", "ovr")


class _Malformed(Exception):
    pass


def check_model_text(text: str) -> None:
    """Raise :class:`UnsupportedModelError` unless ``text`` is a LightGBM model LightGBM can parse safely."""
    try:
        _check(text)
    except _Malformed as exc:
        raise UnsupportedModelError(f"the stored LightGBM model is malformed ({exc}): refused before LightGBM "
                                    "parses it, the store may have been tampered with; model left unchanged") from None


def _check(text: str) -> None:
    if any(c < " " and c != "\n" for c in text):  # C strings end at NUL; LightGBM reads \r as a line end
        raise _Malformed("control characters")
    first = text.find("\nTree=")
    end = text.find("\nend of trees\n")
    if first < 0 or end < first:
        raise _Malformed("no trees")
    header = _header(text[:first + 1])
    features = header["max_feature_idx"] + 1
    sizes = header["tree_sizes"]
    trees = text[first + 1:end + 1]
    if not trees.isascii():  # LightGBM writes trees in ASCII: characters are bytes, as tree_sizes counts
        raise _Malformed("trees that are not ASCII text")
    offset = 0
    for index, size in enumerate(sizes):
        _tree(trees[offset:offset + size], index, features)
        offset += size
    if offset != len(trees):
        raise _Malformed(f"tree_sizes cover {offset} of {len(trees)} bytes of trees")
    if len(sizes) % header["num_tree_per_iteration"]:
        raise _Malformed("the number of trees is not a multiple of the trees per iteration")
    _parameters(text[end:])


def _parameters(footer: str) -> None:
    """LightGBM splits each line of its parameters section at ':' and reads the second part unchecked."""
    lines = footer.split("\n")
    if "parameters:" not in lines:
        return
    for line in lines[lines.index("parameters:") + 1:]:
        if line == "end of parameters":
            return
        if line and not _PARAMETER.fullmatch(line):
            raise _Malformed("a parameter line that is not [name: value]")


def _header(text: str) -> dict:
    values: dict[str, str] = {}
    for line in text.split("\n"):
        if not line or line in ("tree", "average_output"):
            continue
        key, sep, value = line.partition("=")
        if not sep or ("=" in value and key not in ("feature_names", "monotone_constraints")):
            raise _Malformed("a header line that is not key=value")
        values[key] = value
    found = {}
    for key in ("num_class", "num_tree_per_iteration", "label_index", "max_feature_idx"):
        if key not in values or not _INT.fullmatch(values[key]):
            raise _Malformed(f"header {key} missing or not an integer")
        found[key] = int(values[key])
    if found["num_class"] < 1 or found["num_tree_per_iteration"] != found["num_class"]:
        raise _Malformed("num_class and num_tree_per_iteration differ")
    if not 0 <= found["max_feature_idx"] < 1 << 31:
        raise _Malformed("max_feature_idx out of range")
    features = found["max_feature_idx"] + 1
    for key in ("feature_names", "feature_infos"):
        if key not in values or len(values[key].split(" ")) != features:
            raise _Malformed(f"{key} does not list {features} features")
    if "monotone_constraints" in values:
        constraints = values["monotone_constraints"].split(" ")
        if len(constraints) != features or not all(c in ("-1", "0", "1") for c in constraints):
            raise _Malformed("monotone_constraints do not match the features")
    _objective(values.get("objective"), found["num_class"])
    sizes = values.get("tree_sizes", "").split(" ")
    if not all(_INT.fullmatch(s) and int(s) > 0 for s in sizes):
        raise _Malformed("tree_sizes missing or not positive integers")
    found["tree_sizes"] = [int(s) for s in sizes]
    return found


def _objective(objective: str | None, num_class: int) -> None:
    if objective is None:
        return
    name, *options = objective.split(" ")
    for option in options:
        key, _sep, value = option.partition(":")
        if key == "num_class" and value != str(num_class):  # its outputs are sized by the header's
            raise _Malformed("the objective's num_class differs from the header's")
    if name in _MULTICLASS and f"num_class:{num_class}" not in options:
        raise _Malformed("a multiclass objective without the header's num_class")


def _numbers(value: str, count: int, integers: bool, key: str, spaced: bool = False) -> list:
    """``count`` numbers separated by one space (``spaced``: by any run of spaces, as linear leaves are)."""
    if count == 0 and not value.strip(" "):
        return []
    items = value.split() if spaced else value.split(" ") if value else []
    pattern = _INT if integers else _FLOAT
    if len(items) != count or not all(pattern.fullmatch(item) for item in items):
        raise _Malformed(f"{key} does not hold {count} numbers")
    return [int(item) for item in items] if integers else items


def _tree(block: str, index: int, features: int) -> None:
    match = _TREE_HEADER.match(block)
    if not match or int(match.group(1)) != index:
        raise _Malformed(f"tree {index} does not start at its tree_sizes offset")
    body, sep, rest = block[match.end():].partition("\n\n")
    if not sep or rest.strip("\n"):
        raise _Malformed(f"tree {index} is not followed by an empty line")
    lines = body.split("\n")
    values: dict[str, str] = {}
    for line in lines:
        key, sep, value = line.partition("=")
        if not sep or key not in _TREE_KEYS or key in values:
            raise _Malformed(f"tree {index} has a line LightGBM does not write")
        values[key] = value
    if len(lines) > 22:
        raise _Malformed(f"tree {index} has more lines than LightGBM reads")
    for key in ("num_leaves", "num_cat", "leaf_value"):
        if key not in values:
            raise _Malformed(f"tree {index} lacks {key}")
    leaves = _numbers(values["num_leaves"], 1, True, "num_leaves")[0]
    categories = _numbers(values["num_cat"], 1, True, "num_cat")[0]
    linear = _numbers(values.get("is_linear", "0"), 1, True, "is_linear")[0]
    if not 1 <= leaves < 1 << 31 or not 0 <= categories < 1 << 31 or linear not in (0, 1):
        raise _Malformed(f"tree {index} counts out of range")
    if "shrinkage" in values:
        _numbers(values["shrinkage"], 1, False, "shrinkage")
    arrays = {key: _numbers(values[key], leaves, key in _INT_KEYS, key) for key in _PER_LEAF[:1]}
    if "leaf_count" in values:
        _numbers(values["leaf_count"], leaves, True, "leaf_count")
    if leaves > 1 or linear:
        for key in ("left_child", "right_child", "split_feature", "threshold"):
            if key not in values:
                raise _Malformed(f"tree {index} lacks {key}")
        for key in _PER_SPLIT:
            if key in values:
                arrays[key] = _numbers(values[key], leaves - 1, key in _INT_KEYS, key)
        if "leaf_weight" in values:
            _numbers(values["leaf_weight"], leaves, False, "leaf_weight")
        _structure(arrays, leaves, categories, features, index)
        if linear:
            _linear(values, leaves, features, index)
    if categories > 0:
        for key in ("cat_boundaries", "cat_threshold"):
            if key not in values:
                raise _Malformed(f"tree {index} lacks {key}")
        bounds = _numbers(values["cat_boundaries"], categories + 1, True, "cat_boundaries")
        if bounds[0] != 0 or any(b > a for b, a in itertools.pairwise(bounds)):
            raise _Malformed(f"tree {index} cat_boundaries are not increasing from 0")
        thresholds = _numbers(values["cat_threshold"], bounds[-1], True, "cat_threshold")
        if any(not 0 <= t < 1 << 32 for t in thresholds):
            raise _Malformed(f"tree {index} cat_threshold out of range")


def _structure(arrays: dict, leaves: int, categories: int, features: int, index: int) -> None:
    splits = leaves - 1
    if splits == 0:
        return
    seen_leaves, seen_nodes = set(), set()
    for node in range(splits):
        for child in (arrays["left_child"][node], arrays["right_child"][node]):
            if child >= 0:
                if not node < child < splits or child in seen_nodes:
                    raise _Malformed(f"tree {index} child indices out of range")
                seen_nodes.add(child)
            else:
                leaf = ~child
                if not 0 <= leaf < leaves or leaf in seen_leaves:
                    raise _Malformed(f"tree {index} leaf indices out of range")
                seen_leaves.add(leaf)
        if not 0 <= arrays["split_feature"][node] < features:
            raise _Malformed(f"tree {index} split_feature outside 0..{features - 1}")
        decision = arrays.get("decision_type", [0] * splits)[node]
        if not -128 <= decision <= 127 or (decision >> 2) & 3 == 3:
            raise _Malformed(f"tree {index} decision_type out of range")
        if decision & 1:  # categorical: the threshold indexes cat_boundaries
            threshold = arrays["threshold"][node]
            if not _INT.fullmatch(threshold) or not 0 <= int(threshold) < categories:
                raise _Malformed(f"tree {index} categorical split without its categories")
    if len(seen_leaves) != leaves or len(seen_nodes) != splits - 1:
        raise _Malformed(f"tree {index} does not reach every node once")


def _linear(values: dict, leaves: int, features: int, index: int) -> None:
    if "leaf_const" in values:
        _numbers(values["leaf_const"], leaves, False, "leaf_const", spaced=True)
    if "num_features" not in values:
        return
    counts = _numbers(values["num_features"], leaves, True, "num_features", spaced=True)
    if any(c < 0 for c in counts):
        raise _Malformed(f"tree {index} negative num_features")
    total = sum(counts)
    if total and ("leaf_features" not in values or "leaf_coeff" not in values):
        raise _Malformed(f"tree {index} has linear leaves without their features and coefficients")
    if "leaf_features" in values:
        used = _numbers(values["leaf_features"], total, True, "leaf_features", spaced=True)
        if any(not 0 <= f < features for f in used):
            raise _Malformed(f"tree {index} leaf_features outside 0..{features - 1}")
    if "leaf_coeff" in values:
        _numbers(values["leaf_coeff"], total, False, "leaf_coeff", spaced=True)
