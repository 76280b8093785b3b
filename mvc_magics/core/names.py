"""Validation of user-chosen names (models, tags, remotes).

Names end up in file paths (``refs/<model>/tags/<tag>``) and in shared stores, so anything that
could escape a folder or confuse a terminal is refused, after decoding.
"""

from __future__ import annotations

import re
import unicodedata

from ..errors import InvalidNameError

# Reserved because the ref grammar gives them a meaning of its own.
RESERVED = frozenset({"HEAD", "latest"})
_MAX_LENGTH = 128
_ALLOWED = re.compile(r"^[\w][\w.\-+@=]*$", re.UNICODE)


def validate_name(name: object, kind: str = "name") -> str:
    """Return ``name`` if it is a safe model/tag/remote name, else raise :class:`InvalidNameError`.

    >>> validate_name("baseline", "tag")
    'baseline'
    """
    if not isinstance(name, str):
        raise InvalidNameError(f"{kind} must be a string, not {type(name).__name__}")
    if not name:
        raise InvalidNameError(f"{kind} must not be empty")
    if len(name) > _MAX_LENGTH:
        raise InvalidNameError(f"{kind} {name[:20]!r}... is longer than {_MAX_LENGTH} characters")
    if any(unicodedata.category(ch).startswith("C") for ch in name):
        raise InvalidNameError(f"{kind} {name!r} contains control characters")
    # What a file system or terminal may turn the name into (NFKC: "\uff0f" is "/", "\u2025" is "..")
    # must be as safe as the name itself.
    folded = unicodedata.normalize("NFKC", name)
    if any(sep in text for text in (name, folded) for sep in ("/", "\\", "..")):
        raise InvalidNameError(f"{kind} {name!r} must not contain '/', '\\' or '..'")
    if name.startswith(".") or folded.startswith("."):
        raise InvalidNameError(f"{kind} {name!r} must not start with a dot")
    if ":" in name or "~" in name:
        raise InvalidNameError(f"{kind} {name!r} must not contain ':' or '~' (they are ref syntax)")
    if not _ALLOWED.match(name):
        raise InvalidNameError(
            f"{kind} {name!r} may only contain letters, digits and . _ - + @ ="
        )
    if name in RESERVED:
        raise InvalidNameError(f"{kind} {name!r} is reserved by the ref grammar")
    return name


def is_valid_name(name: object) -> bool:
    """True when :func:`validate_name` accepts ``name`` (for names read from untrusted files)."""
    try:
        validate_name(name)
    except InvalidNameError:
        return False
    return True
