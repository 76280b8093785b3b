"""Adapter for JAX: nested pytrees of arrays, and Flax NNX modules.

A pytree (dicts, lists, tuples, NamedTuples such as optax states; JAX and numpy arrays as leaves)
is named by its tree paths (``params/dense/kernel``, ``1/mu/w``). JAX arrays are immutable, so a
checkout into a pytree *returns a new pytree* of the live one's structure (the magics rebind the
variable); a Flax NNX module is updated in place, variable by variable. Nothing here imports JAX
until such a model is handled. The structure is JSON (container kinds, keys, NamedTuple classes),
and rebuilding makes NamedTuple classes only from an exact allow-list (the state classes optax
exports) or with the user's opt-in (see :mod:`.trust`).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from ..errors import ShapeMismatchError, UnsupportedModelError
from .base import match_state
from .trust import AllowList, TrustPolicy, entry_of, import_class, qualified_name, shown

STRUCTURE_FORMAT = "jax.pytree/1"


def _allowed_entries() -> list[str]:
    """The NamedTuple states optax exports (each where it is defined): what optimizer states hold."""
    import importlib

    entries = []
    for name in ("optax", "optax.contrib", "optax.schedules"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        for attr in dir(module):
            obj = getattr(module, attr, None)
            if isinstance(obj, type) and issubclass(obj, tuple) and hasattr(obj, "_fields"):
                entries.append(entry_of(obj))
    return entries


# The classes a rebuild may make without asking: exact names, never a package prefix.
ALLOWED = AllowList(_allowed_entries)


def _jax():
    import jax

    return jax


def _is_nnx(obj: object) -> bool:
    nnx = sys.modules.get("flax.nnx")
    return nnx is not None and isinstance(obj, nnx.Module)


def _is_leaf(value: object) -> bool:
    jax = sys.modules.get("jax")
    return isinstance(value, np.ndarray | np.generic) or (jax is not None and isinstance(value, jax.Array))


def _has_jax_leaf(obj: object, depth: int = 0) -> bool | None:
    """True if ``obj`` is a container of arrays with at least one JAX array or nesting; None if
    some leaf is not an array (then it is not a pytree model)."""
    if depth > 64:
        return None
    if _is_leaf(obj):
        return not isinstance(obj, np.ndarray | np.generic)
    if isinstance(obj, dict):
        items = list(obj.values())
    elif isinstance(obj, list | tuple):
        items = list(obj)
    elif obj is None:
        return False
    else:
        return None
    found = False
    for item in items:
        inner = _has_jax_leaf(item, depth + 1)
        if inner is None:
            return None
        found = found or inner or isinstance(item, dict | list | tuple)
    return found


class JaxAdapter:
    """JAX pytrees (checkout returns a new pytree) and Flax NNX modules (updated in place)."""

    framework = "jax"

    def handles(self, obj: object) -> bool:
        if "jax" not in sys.modules:
            return False
        if _is_nnx(obj):
            return True
        return isinstance(obj, dict | list | tuple) and bool(_has_jax_leaf(obj))

    # -- leaves ------------------------------------------------------------------------------------

    def named_leaves(self, model: Any) -> dict[str, Any]:
        """Tree-path name -> leaf (a JAX/numpy array, or an NNX variable)."""
        if _is_nnx(model):
            from flax import nnx

            return {"/".join(map(str, path)): variable for path, variable in nnx.to_flat_state(nnx.state(model))}
        jax = _jax()
        leaves, _treedef = jax.tree_util.tree_flatten_with_path(model)
        return {"/".join(_key(k) for k in path): leaf for path, leaf in leaves}

    def get_state(self, model: Any) -> dict[str, np.ndarray]:
        named = self.named_leaves(model)
        if not named:
            raise UnsupportedModelError("the pytree has no arrays to version")
        return {name: _to_numpy(_value(leaf)) for name, leaf in named.items()}

    def set_state(self, model: Any, state: Mapping[str, np.ndarray], owned: bool = False) -> None:
        """NNX modules: each variable set in place (all shapes checked first). Pytrees whose
        containers are all dicts/lists: leaves replaced in place; others are refused (use checkout,
        which returns a new pytree)."""
        named = self.named_leaves(model)
        pairs = self._check(named, state)
        if _is_nnx(model):
            values = {key: _like(_value(named[key]), state[stored]) for key, stored in pairs.items()}
            for key, value in values.items():
                named[key].set_value(value)
            return
        rebuilt = self.load_version(model, None, state)
        _assign_in_place(model, rebuilt)

    def load_version(self, model: Any, structure: object, state: Mapping[str, np.ndarray]) -> Any:
        """NNX: update in place and return the module; pytree: a new pytree of ``model``'s structure."""
        if _is_nnx(model):
            self.set_state(model, state)
            return model
        jax = _jax()
        named = self.named_leaves(model)
        pairs = self._check(named, state)
        leaves = [_like(leaf, state[pairs[key]]) for key, leaf in named.items()]
        return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(model), leaves)

    def _check(self, named: Mapping[str, Any], state: Mapping[str, np.ndarray]) -> dict[str, str]:
        live = {key: (tuple(np.shape(_value(v))), _dtype(_value(v)).name) for key, v in named.items()}
        pairs = match_state(live, state)
        wrong = [f"{k}: model {live[k][1]} vs stored {state[s].dtype.name}" for k, s in pairs.items()
                 if _kind(np.dtype(live[k][1])) != _kind(state[s].dtype)]
        if wrong:
            raise ShapeMismatchError(f"dtype mismatch, model left unchanged: {'; '.join(wrong[:3])}")
        return pairs

    # -- structure ---------------------------------------------------------------------------------

    def structure(self, model: Any) -> object | None:
        if _is_nnx(model):
            return {"format": STRUCTURE_FORMAT, "nnx": qualified_name(type(model)),
                    "variables": {k: type(v).__name__ for k, v in self.named_leaves(model).items()}}
        return {"format": STRUCTURE_FORMAT, "tree": _describe(model)}

    def build(self, structure: object, state: Mapping[str, np.ndarray], unsafe: bool = False,
              classes: Iterable[type] = ()) -> Any:
        if not isinstance(structure, dict) or structure.get("format") != STRUCTURE_FORMAT:
            raise UnsupportedModelError("this version has no JAX structure")
        if "nnx" in structure:
            raise UnsupportedModelError(f"a Flax NNX module ({structure['nnx']}) is rebuilt by its own code: "
                                        "construct it, then check the version out into it")
        policy = TrustPolicy(ALLOWED, unsafe, classes)
        return _construct(structure["tree"], state, policy)

    # -- merge and export --------------------------------------------------------------------------

    export_formats = ("safetensors",)

    def export(self, structure: object, state: Mapping[str, np.ndarray], path: str, fmt: str) -> None:
        """The leaves by tree path, for ``safetensors.flax.load_file`` (or ``safetensors.numpy``)."""
        from safetensors.numpy import save_file

        save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, path)

    def extra_metadata(self, model: Any) -> dict:
        return {"jax": {"nnx": qualified_name(type(model))}} if _is_nnx(model) else {}

    def fit_metrics(self, model: Any) -> dict[str, float]:
        return {}

    def library_versions(self) -> dict[str, str]:
        versions = {"jax": _jax().__version__}
        flax = sys.modules.get("flax")
        if flax is not None:
            versions["flax"] = getattr(flax, "__version__", "unknown")
        return versions


# -- helpers ---------------------------------------------------------------------------------------

def _key(entry: Any) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def _value(leaf: Any) -> Any:
    return leaf.get_value() if hasattr(leaf, "get_value") else leaf


def _is_key_array(value: Any) -> bool:
    jax = sys.modules.get("jax")
    return jax is not None and isinstance(value, jax.Array) and jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key)


def _dtype(value: Any) -> np.dtype:
    if _is_key_array(value):  # random keys are stored as their raw key data
        return np.dtype("uint32")
    return np.dtype(value.dtype) if hasattr(value, "dtype") else np.asarray(value).dtype


def _kind(dtype: np.dtype) -> str:
    return "f" if dtype.kind == "f" or dtype.name.startswith(("bfloat", "float")) else dtype.kind


def _to_numpy(value: Any) -> np.ndarray:
    if _is_key_array(value):
        value = _jax().random.key_data(value)
    return np.asarray(value)


def _like(live: Any, stored: np.ndarray) -> Any:
    """``stored`` as the kind of leaf ``live`` is: a JAX array on its device and dtype, or numpy."""
    value = _value(live)
    if isinstance(value, np.ndarray | np.generic):
        return np.array(stored, dtype=value.dtype, copy=True)
    jax = _jax()
    if _is_key_array(value):
        return jax.random.wrap_key_data(jax.device_put(stored, value.sharding), impl=jax.random.key_impl(value))
    return jax.device_put(np.asarray(stored, dtype=value.dtype), value.sharding)


def _describe(node: Any) -> dict:
    if _is_leaf(node):
        return {"leaf": "numpy" if isinstance(node, np.ndarray | np.generic) else "jax"}
    if node is None:
        return {"none": True}
    if isinstance(node, dict):
        return {"dict": [[str(k), _describe(v)] for k, v in sorted(node.items(), key=lambda kv: str(kv[0]))]}
    if isinstance(node, tuple) and hasattr(node, "_fields"):
        return {"namedtuple": qualified_name(type(node)), "fields": [[f, _describe(getattr(node, f))]
                                                                      for f in node._fields]}
    if isinstance(node, list | tuple):
        return {"list" if isinstance(node, list) else "tuple": [_describe(v) for v in node]}
    raise UnsupportedModelError(f"cannot describe a {type(node).__name__} in a pytree")


def _construct(node: dict, state: Mapping[str, np.ndarray], policy: TrustPolicy, path: str = "") -> Any:
    def child(key: object) -> str:
        return f"{path}/{key}" if path else str(key)

    if "leaf" in node:
        if path not in state:
            raise ShapeMismatchError(f"the version lacks tensor {path!r}")
        array = np.array(state[path], copy=True)
        return array if node["leaf"] == "numpy" else _jax().numpy.asarray(array)
    if node.get("none"):
        return None
    if "dict" in node:
        return {k: _construct(v, state, policy, child(k)) for k, v in node["dict"]}
    if "namedtuple" in node:
        cls = import_class(node["namedtuple"], policy)
        fields = node.get("fields")
        if not isinstance(fields, list) or [f[0] if isinstance(f, list) and len(f) == 2 else None
                                            for f in fields] != list(getattr(cls, "_fields", ())):
            raise UnsupportedModelError(f"the stored fields of {shown(node['namedtuple'])} are not the fields of "
                                        "that class; check the version out into an existing pytree instead")
        return cls(**{f: _construct(v, state, policy, child(f)) for f, v in fields})
    kind = "list" if "list" in node else "tuple"
    items = [_construct(v, state, policy, child(i)) for i, v in enumerate(node[kind])]
    return items if kind == "list" else tuple(items)


def _assign_in_place(model: Any, rebuilt: Any) -> None:
    """Copy ``rebuilt``'s leaves into ``model``'s mutable containers; refuse immutable ones first."""
    def check(node: Any) -> None:
        if isinstance(node, tuple):
            raise UnsupportedModelError("this pytree holds tuples, which cannot change in place: use "
                                        "repo.checkout(ref, tree), which returns the new pytree")
        for item in (node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()):
            check(item)

    check(model)

    def assign(live: Any, new: Any) -> None:
        keys = list(live) if isinstance(live, dict) else range(len(live))
        for key in keys:
            if isinstance(live[key], dict | list):
                assign(live[key], new[key])
            else:
                live[key] = new[key]

    assign(model, rebuilt)
