"""Which classes a rebuild may import: an allow-list, widened only by the user's explicit opt-in.

A stored structure is untrusted input; naming a class in it must not be enough to import and run
that class's code. Each adapter trusts its framework's own packages; anything else is imported only
with ``unsafe=True`` (trust the whole store; ``--unsafe`` on the magics) or when the class itself is
passed in ``classes=`` (a list of classes, or a mapping ``{"Net": Net}``). Structures record the
class as ``module.QualName``; a class defined in the notebook is ``__main__.Name``.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ..errors import UnsupportedModelError

Classes = Iterable[type] | Mapping[str, type]


def qualified_name(cls: type) -> str:
    """``module.QualName`` of a class, as stored in structures."""
    return f"{cls.__module__}.{cls.__qualname__}"


def describe_class(path: str) -> str:
    """``Net (a class defined in the notebook)`` / ``Net from pkg.models``: for messages."""
    module, _, name = path.rpartition(".")
    return f"{name} (a class defined in the notebook)" if module in ("", "__main__") else f"{name} from {module}"


def opt_in_hint(path: str) -> str:
    """The sentences every refusal ends with: how to opt in, or how to do without a rebuild."""
    name = path.rsplit(".", 1)[-1]
    return (f"To rebuild it, pass classes={{{name!r}: {name}}} (or unsafe=True to look the class up by name; "
            "--unsafe on the magics), or check the version out into an existing model of that class "
            "(%mvc_checkout REF model).")


@dataclass
class TrustPolicy:
    """Trusted module prefixes, plus the user's opt-in (``unsafe``, or the ``classes`` themselves)."""

    prefixes: tuple[str, ...]
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
        """The class the user passed for ``path``: by qualified name, else by its (unique) class name."""
        if path in self._given:
            return self._given[path]
        candidates = {id(c): c for c in self._by_name.get(path.rsplit(".", 1)[-1], [])}
        return next(iter(candidates.values())) if len(candidates) == 1 else None

    def allows(self, path: str) -> bool:
        return self.unsafe or self.given(path) is not None or path.startswith(self.prefixes)


def import_class(path: object, policy: TrustPolicy) -> type:
    """The class stored as ``path`` (``module.QualName``), if ``policy`` allows importing it."""
    if not isinstance(path, str) or "." not in path:
        raise UnsupportedModelError(f"The structure names no class ({str(path)[:80]!r}), so the version cannot be "
                                    "rebuilt; check it out into an existing model instead (%mvc_checkout REF model).")
    given = policy.given(path)
    if given is not None:
        return given
    if not policy.allows(path):
        raise UnsupportedModelError(f"The model is {describe_class(path)}, and rebuilding it runs that class's code. "
                                    + opt_in_hint(path))
    # The longest importable module prefix: classes may be nested (Outer.Inner).
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
    raise UnsupportedModelError(f"The model is {describe_class(path)}, which cannot be found in this Python: define "
                                "or import the class first, or pass it with classes=.")
