"""Which classes a rebuild may import: an allow-list, widened only by the user's explicit opt-in.

A stored structure is untrusted input; naming a class in it must not be enough to import and run
that class's code. Each adapter trusts its framework's own packages; anything else is imported only
with ``unsafe=True`` (trust the whole store) or when the class itself is passed in ``classes=``.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..errors import UnsupportedModelError


def qualified_name(cls: type) -> str:
    """``module.QualName`` of a class, as stored in structures."""
    return f"{cls.__module__}.{cls.__qualname__}"


@dataclass
class TrustPolicy:
    """Trusted module prefixes, plus the user's opt-in (``unsafe``, or the ``classes`` themselves)."""

    prefixes: tuple[str, ...]
    unsafe: bool = False
    classes: Iterable[type] = ()
    _given: dict[str, type] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self._given = {qualified_name(cls): cls for cls in self.classes or ()}

    def given(self, path: str) -> type | None:
        """The class the user passed for ``path``, if any."""
        return self._given.get(path)

    def allows(self, path: str) -> bool:
        return self.unsafe or path in self._given or path.startswith(self.prefixes)


def import_class(path: object, policy: TrustPolicy) -> type:
    """The class stored as ``path`` (``module.QualName``), if ``policy`` allows importing it."""
    if not isinstance(path, str) or "." not in path:
        raise UnsupportedModelError(f"the structure names no class ({str(path)[:80]!r})")
    given = policy.given(path)
    if given is not None:
        return given
    if not policy.allows(path):
        raise UnsupportedModelError(
            f"rebuilding needs class {path}, which is not on the trusted list: "
            f"pass classes=[{path.rsplit('.', 1)[-1]}] "
            "(or unsafe=True / --unsafe if you trust this store), or check out into an existing model"
        )
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
    raise UnsupportedModelError(f"class {path} cannot be found in this Python; import or define it first")
