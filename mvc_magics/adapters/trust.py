"""Which classes and functions a rebuild may use: exact allow-lists, widened only by the user's opt-in.

A stored structure is untrusted input: naming a class in it must not be enough to import and run
that class's code. Each adapter has an :class:`AllowList` of exact ``module:qualname`` entries (its
framework's own layers, estimators or state classes); a stored name is looked up there and nowhere
else, and the object found must be defined where the entry says (its own ``__module__`` and
``__qualname__``). There is no prefix match and no walk along attributes of an allowed module: a
stored ``torch.nn.functional.np.f2py.subprocess.Popen`` is simply not on the list.

Anything else is used only with the user's explicit opt-in: ``classes=`` (the classes themselves, a
list or a mapping ``{"Net": Net}``: only those classes) or ``unsafe=True`` (``--unsafe`` on the magics:
any class the store names is imported by name, i.e. the store is trusted like code). Structures
record a class as ``module.QualName``; a class defined in the notebook is ``__main__.Name``.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from ..errors import UnsupportedModelError

Classes = Iterable[type] | Mapping[str, type]
# Values a stored constructor argument may hold: JSON's kinds (tuples are lists read back).
DATA = (bool, int, float, str, type(None))


def qualified_name(cls: type) -> str:
    """``module.QualName`` of a class, as stored in structures."""
    return f"{cls.__module__}.{cls.__qualname__}"


def entry_of(obj: object) -> str:
    """The allow-list entry ``module:qualname`` naming ``obj`` where it is defined."""
    return f"{obj.__module__}:{obj.__qualname__}"


def shown(text: object, limit: int = 120) -> str:
    """Stored text as it may appear in a one-line message: printable, and cut at ``limit``."""
    full = str(text)
    cut = "".join(c if c.isprintable() else "?" for c in full[:limit])
    return cut + "..." if len(full) > limit else cut


def describe_class(path: str) -> str:
    """``Net (a class defined in the notebook)`` / ``Net from pkg.models``: for messages."""
    module, _, name = shown(path, 160).rpartition(".")
    return f"{name} (a class defined in the notebook)" if module in ("", "__main__") else f"{name} from {module}"


def opt_in_hint(path: str) -> str:
    """The sentences every refusal ends with: how to opt in, or how to do without a rebuild."""
    name = shown(path, 160).rsplit(".", 1)[-1]
    return (f"To rebuild it, pass classes={{{name!r}: {name}}} (or unsafe=True to look the class up by name; "
            "--unsafe on the magics), or check the version out into an existing model of that class "
            "(%mvc_checkout REF model).")


class AllowList:
    """Exact ``module:qualname`` entries, possibly computed once from a framework's public names.

    ``entries`` is an iterable of entries or a function returning one (called on first use, so a
    framework is imported only when one of its models is rebuilt).
    """

    def __init__(self, entries: Iterable[str] | Callable[[], Iterable[str]]) -> None:
        self._source = entries
        self._by_path: dict[str, tuple[str, str]] | None = None

    def _paths(self) -> dict[str, tuple[str, str]]:
        if self._by_path is None:
            entries = self._source() if callable(self._source) else self._source
            by_path: dict[str, tuple[str, str]] = {}
            for entry in entries:
                module, sep, qualname = entry.partition(":")
                if not sep or not module or not qualname:
                    raise ValueError(f"allow-list entries are 'module:qualname', not {entry!r}")
                by_path[f"{module}.{qualname}"] = (module, qualname)
            self._by_path = by_path
        return self._by_path

    def __contains__(self, path: object) -> bool:
        return isinstance(path, str) and path in self._paths()

    def resolve(self, path: str) -> object | None:
        """The object listed as ``path`` (``module.qualname``), defined exactly there; else None."""
        found = self._paths().get(path)
        if found is None:
            return None
        module_name, qualname = found
        try:
            obj: object = importlib.import_module(module_name)
            for attr in qualname.split("."):  # the entry's own qualname, never the stored text
                obj = getattr(obj, attr)
        except (ImportError, AttributeError):
            return None
        if getattr(obj, "__module__", None) != module_name or getattr(obj, "__qualname__", None) != qualname:
            return None
        return obj


EMPTY = AllowList(())


@dataclass
class TrustPolicy:
    """The adapter's allow-list, plus the user's opt-in (``unsafe``, or the ``classes`` themselves)."""

    allowed: AllowList
    unsafe: bool = False
    classes: Classes | None = ()
    _given: dict[str, type] = field(default_factory=dict, init=False)
    _by_name: dict[str, list[type]] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        given = self.classes or ()
        items = list(given.items()) if isinstance(given, Mapping) else [(None, cls) for cls in given]
        for key, cls in items:
            if not isinstance(cls, type):
                raise UnsupportedModelError(f"classes= must hold classes, and {key or cls!r} is a "
                                            f"{type(cls).__name__}; pass the class itself.")
            self._given[qualified_name(cls)] = cls
            for name in {key, cls.__name__} - {None}:
                self._by_name.setdefault(str(name).rsplit(".", 1)[-1], []).append(cls)

    def given(self, path: str) -> type | None:
        """The class the user passed for ``path``: by qualified name, else by its (unique) class name.

        The class returned is the user's own object: nothing is imported to find it.
        """
        if path in self._given:
            return self._given[path]
        candidates = {id(c): c for c in self._by_name.get(path.rsplit(".", 1)[-1], [])}
        return next(iter(candidates.values())) if len(candidates) == 1 else None

    def given_exactly(self, path: str) -> bool:
        """True when the user passed the class whose qualified name is exactly ``path``."""
        return path in self._given

    def allows(self, path: str) -> bool:
        """True when ``path`` is on the allow-list or the user opted in for it."""
        return self.unsafe or path in self.allowed or self.given(path) is not None


def import_class(path: object, policy: TrustPolicy) -> type:
    """The class stored as ``path`` (``module.QualName``), if ``policy`` allows it.

    Without the user's opt-in, only an exact allow-list entry is used, and only if the class found
    is defined where the entry says.
    """
    if not isinstance(path, str) or "." not in path:
        raise UnsupportedModelError(f"The structure names no class ({shown(path, 80)!r}), so the version cannot be "
                                    "rebuilt; check it out into an existing model instead (%mvc_checkout REF model).")
    given = policy.given(path)
    if given is not None:
        return given
    if path in policy.allowed:
        obj = policy.allowed.resolve(path)
        if isinstance(obj, type):
            return obj
        raise UnsupportedModelError(f"The model is {describe_class(path)}, which this Python does not define "
                                    "where the allow-list says; check the version out into an existing model.")
    if not policy.unsafe:
        raise UnsupportedModelError(f"The model is {describe_class(path)}, and rebuilding it runs that class's "
                                    "code. " + opt_in_hint(path))
    return _import_by_name(path)


def _import_by_name(path: str) -> type:
    """``unsafe=True`` only: the class found at the longest importable module prefix of ``path``."""
    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        module_name, qualname = ".".join(parts[:cut]), ".".join(parts[cut:])
        module = sys.modules.get(module_name)
        if module is None:
            try:
                module = importlib.import_module(module_name)
            except ImportError:
                continue
        obj: object = module
        try:
            for attr in qualname.split("."):
                obj = getattr(obj, attr)
        except AttributeError:
            continue
        if isinstance(obj, type):
            return obj
    raise UnsupportedModelError(f"The model is {describe_class(path)}, which cannot be found in this Python: "
                                "define or import the class first, or pass it with classes=.")


def data_only(value: object, depth: int = 0) -> bool:
    """True when ``value`` is plain data: numbers, strings, bools, None, and lists/tuples/dicts of them."""
    if depth > 32:
        return False
    if isinstance(value, DATA):
        return True
    if isinstance(value, list | tuple):
        return all(data_only(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and data_only(v, depth + 1) for k, v in value.items())
    return False


def checked_arguments(cls: type, args: object, what: str, supplied: Mapping[str, object] | None = None) -> dict:
    """``args`` as keyword arguments of ``cls``: a dict of plain data its constructor signature binds
    (together with the arguments the rebuild ``supplied`` itself, such as rebuilt members)."""
    if not isinstance(args, dict) or not data_only(args):
        raise UnsupportedModelError(f"cannot rebuild {what}: its stored constructor arguments are not plain data; "
                                    "check the version out into an existing model instead.")
    try:
        inspect.signature(cls).bind(**{**args, **(supplied or {})})
    except (TypeError, ValueError) as exc:
        raise UnsupportedModelError(f"cannot rebuild {what}: the stored arguments do not fit its constructor "
                                    f"({shown(exc)}); check the version out into an existing model instead.") from exc
    return args
