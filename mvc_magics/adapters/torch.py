"""Adapter for PyTorch ``nn.Module`` models: every parameter and buffer, by ``state_dict()`` key.

PyTorch is imported only when a module is actually handled (``handles`` looks at ``sys.modules``).
Tied tensors (one ``Parameter`` under several keys, e.g. an embedding shared with the output layer)
are stored once, under their first key; the structure lists the other keys as aliases, and since a
checkout copies into the live tensors in place, a tied model stays tied.

Rebuilding (``--as``) needs the module's class: the layers ``torch.nn`` exports and this package's
ensemble are on an exact allow-list (see :mod:`.trust`); any other class is used only with
``unsafe=True`` or when passed in ``classes=``. Stored arguments are plain data, bound to the
constructor's signature before the call.
Constructor arguments are found the way most modules keep them: attributes named like the
``__init__`` parameters (``nn.Linear(in_features, out_features)``), or Lightning's ``hparams``.
"""

from __future__ import annotations

import inspect
import json
import sys
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from ..core.copying import copy_all
from ..errors import ShapeMismatchError, UnsupportedModelError
from .base import match_state
from .trust import AllowList, TrustPolicy, checked_arguments, entry_of, import_class, qualified_name, shown

STRUCTURE_FORMAT = "torch.nn.Module/1"
# numpy has no bfloat16/float8: their bits travel as integers and are viewed as ml_dtypes types.
_BITS_VIEW = {"bfloat16": ("int16", "bfloat16"), "float8_e4m3fn": ("uint8", "float8_e4m3fn"),
              "float8_e5m2": ("uint8", "float8_e5m2")}
_CONTAINERS = {"torch.nn.modules.container.Sequential", "torch.nn.modules.container.ModuleList",
               "torch.nn.modules.container.ModuleDict"}


def _allowed_entries() -> list[str]:
    """The layers ``torch.nn`` exports (each where it is defined), and our output ensemble."""
    torch = _torch()
    from .torch_modules import OutputEnsemble

    public = (getattr(torch.nn, name, None) for name in torch.nn.modules.__all__)
    return [entry_of(cls) for cls in public if isinstance(cls, type) and issubclass(cls, torch.nn.Module)] + [
        entry_of(OutputEnsemble)]


# The classes a rebuild may construct without asking: exact names, never a package prefix.
ALLOWED = AllowList(_allowed_entries)


def _torch():
    import torch

    return torch


class TorchAdapter:
    """PyTorch modules: parameters and buffers in place on their device, rebuild from the class."""

    framework = "torch"

    def handles(self, obj: object) -> bool:
        torch = sys.modules.get("torch")
        return torch is not None and isinstance(obj, torch.nn.Module)

    # -- tensors ------------------------------------------------------------------------------

    def named_tensors(self, model: Any) -> tuple[dict[str, Any], dict[str, str]]:
        """(first key -> live tensor for each distinct tensor, alias key -> first key)."""
        unique: dict[str, Any] = {}
        first_of: dict[int, str] = {}
        aliases: dict[str, str] = {}
        for key, tensor in model.state_dict(keep_vars=True).items():
            if not hasattr(tensor, "detach"):  # extra state some modules add: not a tensor
                raise UnsupportedModelError(f"state_dict entry {key!r} is a {type(tensor).__name__}, not a tensor")
            if id(tensor) in first_of:
                aliases[key] = first_of[id(tensor)]
                continue
            first_of[id(tensor)] = key
            unique[key] = tensor
        return unique, aliases

    def get_state(self, model: Any) -> dict[str, np.ndarray]:
        unique, _aliases = self.named_tensors(model)
        if not unique:
            raise UnsupportedModelError(f"the {type(model).__name__} has no parameters or buffers to version")
        return {key: to_numpy(tensor) for key, tensor in unique.items()}

    # set_state copies every array into the module's own tensors and keeps none of them, so a
    # checkout may hand it read-only views of the mapped snapshot file (one copy, not two).
    copies_in = True
    # set_state calls ``checked`` between its checks and its first copy (see base.load_version).
    signals_checked = True

    def set_state(self, model: Any, state: Mapping[str, np.ndarray], owned: bool = False,
                  checked: Callable[[], None] | None = None) -> None:
        """Copy ``state`` into the module's tensors in place (device and dtype kept).

        Every shape is checked, and every dtype must be of the same kind (a float tensor receives
        floats, an integer buffer integers), before the first copy; ``checked`` is called then.
        """
        torch = _torch()
        unique, _aliases = self.named_tensors(model)
        live = {key: (tuple(t.shape), _dtype_name(t)) for key, t in unique.items()}
        pairs = match_state(live, state)
        problems = [f"{key}: model {live[key][1]} vs stored {state[stored].dtype.name}"
                    for key, stored in pairs.items() if not _same_kind(live[key][1], state[stored].dtype)]
        if problems:
            raise ShapeMismatchError(f"dtype mismatch, model left unchanged: {'; '.join(problems[:3])}")
        # torch.autograd.graph.increment_version: 2.1's API, checked all the same (copy_ without it).
        bump = getattr(getattr(torch.autograd, "graph", None), "increment_version", None)
        direct = {key: target for key, stored in pairs.items()
                  if bump is not None and (target := _cpu_buffer(unique[key], state[stored])) is not None}
        sources = {key: from_numpy(state[stored]) for key, stored in pairs.items() if key not in direct}
        if checked is not None:  # last, so the HEAD move's thread does not compete with the checks
            checked()
        with torch.no_grad():
            for key, source in sources.items():  # other devices, other dtypes: torch converts
                unique[key].copy_(source)
        # CPU tensors of the stored dtype: copied through numpy on every core (copy_all).
        copy_all([(target, _contiguous(state[pairs[key]])) for key, target in direct.items()])
        if direct:  # as copy_ would: autograd then refuses a backward through the values replaced
            bump([unique[key] for key in direct])

    # -- structure and rebuild ------------------------------------------------------------------

    def structure(self, model: Any) -> object | None:
        _unique, aliases = self.named_tensors(model)
        return {"format": STRUCTURE_FORMAT, "module": describe(model), "tied": dict(sorted(aliases.items()))}

    def build(self, structure: object, state: Mapping[str, np.ndarray], unsafe: bool = False,
              classes: Iterable[type] = ()) -> Any:
        if not isinstance(structure, dict) or structure.get("format") != STRUCTURE_FORMAT:
            raise UnsupportedModelError("this version has no PyTorch structure; check it out into an existing module")
        policy = TrustPolicy(ALLOWED, unsafe, classes)
        self._check_size(structure["module"], policy, state)
        model = construct(structure["module"], policy)
        unique, aliases = self.named_tensors(model)
        _refuse_lazy(model, unique)
        if aliases != structure.get("tied", {}):
            raise UnsupportedModelError("the rebuilt module does not tie the same tensors as the stored one; "
                                        "check it out into an existing module instead")
        try:
            self.set_state(model, state)
        except ShapeMismatchError as exc:
            raise UnsupportedModelError(f"the rebuilt {type(model).__name__} does not fit the stored tensors "
                                        f"({exc}); check it out into an existing module instead") from exc
        return model

    def _check_size(self, node: object, policy: TrustPolicy, state: Mapping[str, np.ndarray]) -> None:
        """Build the module on the meta device first (no memory): its tensors must be the stored ones,
        so stored arguments cannot make the real construction allocate more than the version holds."""
        torch = _torch()
        try:
            with torch.device("meta"):
                probe = construct(node, policy)
        except UnsupportedModelError:
            raise
        except Exception:  # a layer that cannot be made on meta: the real construction decides
            return
        unique, _aliases = self.named_tensors(probe)
        _refuse_lazy(probe, unique)
        try:
            match_state({k: (tuple(t.shape), _dtype_name(t)) for k, t in unique.items()}, state)
        except ShapeMismatchError as exc:
            raise UnsupportedModelError(f"the rebuilt {type(probe).__name__} does not fit the stored tensors "
                                        f"({exc}); check it out into an existing module instead") from exc
        held = sum(int(np.prod(np.shape(v), dtype=np.int64)) for v in state.values())
        made = sum(t.numel() for t in [*probe.parameters(), *probe.buffers()])
        if made > held + (1 << 20):  # buffers outside the state dict, beyond a small allowance
            raise UnsupportedModelError(f"the rebuilt {type(probe).__name__} would hold {made} values for {held} "
                                        "stored; check it out into an existing module instead")

    # -- ensembles and export --------------------------------------------------------------------

    def ensemble(self, members: list[Any], weights: list[float], method: str) -> Any:
        """One module computing the weighted mean (or vote) of the members' outputs."""
        from .torch_modules import OutputEnsemble

        return OutputEnsemble(members, weights, method)

    export_formats = ("safetensors", "torchscript")

    def export(self, structure: object, state: Mapping[str, np.ndarray], path: str, fmt: str) -> None:
        """Write ``state`` as safetensors (no rebuild), or the rebuilt module as TorchScript.

        Tied tensors are written once (safetensors refuses shared memory): load the file with
        ``safetensors.torch.load_model(model, path)``, which re-ties them, or ``load_file``.
        """
        if fmt == "safetensors":
            from safetensors.torch import save_file

            tied = json.dumps(structure.get("tied", {}) if isinstance(structure, dict) else {})
            save_file({k: from_numpy(v).clone() for k, v in state.items()}, path, metadata={"mvc_tied": tied})
            return
        model = self.build(structure, state).eval()
        torch = _torch()
        try:
            scripted = torch.jit.script(model)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UnsupportedModelError(f"TorchScript cannot compile this module: {first[:200]}") from exc
        scripted.save(path)

    # -- metadata -------------------------------------------------------------------------------

    def extra_metadata(self, model: Any) -> dict:
        devices = sorted({str(t.device) for t in self.named_tensors(model)[0].values()})
        return {"torch": {"class": qualified_name(type(model)), "devices": devices, "training": bool(model.training)}}

    def fit_metrics(self, model: Any) -> dict[str, float]:
        return {}

    def library_versions(self) -> dict[str, str]:
        return {"torch": _torch().__version__}


# -- tensors <-> numpy ------------------------------------------------------------------------------

def _dtype_name(tensor: Any) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def _same_kind(live: str, stored: np.dtype) -> bool:
    def kind(name: str) -> str:
        if name in _BITS_VIEW or name.startswith(("float", "bfloat")):
            return "f"
        return "c" if name.startswith("complex") else ("b" if name == "bool" else "i")
    return kind(live) == kind(np.dtype(stored).name)


def _contiguous(array: np.ndarray) -> np.ndarray:
    # np.ascontiguousarray would turn a 0-d array (num_batches_tracked) into shape (1,).
    return array if array.flags.c_contiguous else array.copy(order="C")


def _cpu_buffer(tensor: Any, array: np.ndarray) -> np.ndarray | None:
    """The memory of a live CPU tensor as a writable numpy array when ``array`` can be copied
    straight into it (C-contiguous, same dtype and shape), else None (``copy_`` converts)."""
    torch = _torch()
    if (tensor.device.type != "cpu" or tensor.layout != torch.strided or tensor.is_quantized
            or not tensor.is_contiguous() or tensor.is_conj() or tensor.is_neg() or tensor.is_inference()
            or _dtype_name(tensor) != array.dtype.name or _dtype_name(tensor) in _BITS_VIEW):
        return None
    target = tensor.detach().numpy()
    return target if target.shape == array.shape and target.flags.writeable else None


def to_numpy(tensor: Any) -> np.ndarray:
    """The tensor's bytes as a numpy array: a zero-copy view of CPU tensors, a copy of others."""
    torch = _torch()
    value = tensor.detach()
    if value.layout != torch.strided or value.is_quantized:
        raise UnsupportedModelError(f"{value.layout}/quantized tensors are not supported")
    if value.device.type != "cpu":
        value = value.cpu()
    value = value.resolve_conj().resolve_neg()
    name = _dtype_name(value)
    if name in _BITS_VIEW:
        import ml_dtypes

        bits, logical = _BITS_VIEW[name]
        return value.view(getattr(torch, bits)).numpy().view(getattr(ml_dtypes, logical))
    return value.numpy()


def from_numpy(array: np.ndarray) -> Any:
    """A CPU tensor over ``array``'s memory (never written: it is only copied from)."""
    torch = _torch()
    name = array.dtype.name
    array = _contiguous(array)
    if name in _BITS_VIEW:
        bits, logical = _BITS_VIEW[name]
        return torch.from_numpy(array.view(bits)).view(getattr(torch, logical))
    with warnings.catch_warnings():  # read-only arrays: torch warns about writes we never make
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


# -- module descriptions ----------------------------------------------------------------------------

_PLAIN = (bool, int, float, str, type(None))


def _plain(value: Any) -> Any:
    """``value`` as JSON if it is made of plain values (tuples become lists), else raise TypeError."""
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    raise TypeError(type(value).__name__)


def constructor_args(module: Any) -> dict | None:
    """Arguments that rebuild ``module`` from its class, or None when they cannot be found."""
    hparams = getattr(module, "hparams", None)
    if isinstance(hparams, Mapping) and hparams:  # Lightning's save_hyperparameters()
        try:
            return {str(k): _plain(v) for k, v in hparams.items()}
        except TypeError:
            return None
    try:
        parameters = inspect.signature(type(module).__init__).parameters
    except (TypeError, ValueError):
        return None
    args: dict[str, Any] = {}
    for name, parameter in list(parameters.items())[1:]:
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD) or name in ("device", "dtype"):
            continue
        if name == "bias" and hasattr(module, "bias"):  # torch layers keep the tensor, take a bool
            args[name] = module.bias is not None
            continue
        value = getattr(module, name, parameter.default)
        if value is inspect.Parameter.empty:
            return None
        try:
            args[name] = _plain(value)
        except TypeError:
            if parameter.default is inspect.Parameter.empty:
                return None
    return args


def describe(module: Any) -> dict:
    """A JSON description of ``module``: class, constructor arguments, and children for containers."""
    path = qualified_name(type(module))
    node: dict[str, Any] = {"class": path}
    members = getattr(type(module), "mvc_members_argument", None)
    if path in _CONTAINERS:
        node["children"] = [[name, describe(child)] for name, child in module.named_children()]
    elif members is not None:  # a module of modules (our ensemble): the members are described too
        node["children"] = [[str(i), describe(child)] for i, child in enumerate(getattr(module, members))]
        node["args"] = {k: _plain(v) for k, v in sorted(vars(module).items())
                        if k in ("weights", "method")}
    else:
        node["args"] = constructor_args(module)
    return node


def construct(node: dict, policy: TrustPolicy) -> Any:
    """A new module from :func:`describe`'s output; classes are imported only as ``policy`` allows."""
    if not isinstance(node, dict):
        raise UnsupportedModelError("the stored PyTorch structure is malformed; check the version out into an "
                                    "existing module instead")
    path = node.get("class")
    cls = import_class(path, policy)
    what = shown(path)
    if path in _CONTAINERS:
        children = {str(name): construct(child, policy) for name, child in _children(node)}
        if path.endswith("ModuleDict"):
            return cls(children)
        if path.endswith("ModuleList"):
            return cls(list(children.values()))
        from collections import OrderedDict

        return cls(OrderedDict(children))
    args = node.get("args")
    if args is None:
        raise UnsupportedModelError(f"cannot rebuild {what}: its constructor arguments were not found "
                                    "(keep them as attributes of the same name); check out into an existing module")
    members = getattr(cls, "mvc_members_argument", None)
    args = checked_arguments(cls, args, what, {members: []} if members is not None else None)
    if members is not None:
        args = {**args, members: [construct(child, policy) for _name, child in _children(node)]}
    try:
        return cls(**args)
    except Exception as exc:
        raise UnsupportedModelError(f"cannot rebuild {what}({shown(', '.join(args))}): {shown(exc, 200)}; "
                                    "check out into an existing module instead") from exc


def _children(node: dict) -> list:
    children = node.get("children", [])
    if not isinstance(children, list) or not all(isinstance(c, list) and len(c) == 2 for c in children):
        raise UnsupportedModelError("the stored PyTorch structure is malformed; check the version out into an "
                                    "existing module instead")
    return children


def _refuse_lazy(module: Any, tensors: Mapping[str, Any]) -> None:
    """A rebuilt module whose parameters are not made yet (``LazyLinear``...) has no shapes to check
    or fill: refused in one line instead of torch's error at the first shape read."""
    is_lazy = _torch().nn.parameter.is_lazy
    lazy = sorted(key for key, tensor in tensors.items() if is_lazy(tensor))
    if lazy:
        raise UnsupportedModelError(f"the rebuilt {type(module).__name__} has uninitialized (lazy) tensors "
                                    f"({', '.join(lazy[:3])}); check it out into an existing module instead")
