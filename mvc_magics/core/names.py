"""Validation of user-chosen names (models, tags, remotes).

Names end up in file paths (``refs/<model>/tags/<tag>``) and in shared stores, so anything that
could escape a folder or confuse a terminal is refused, after decoding.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
import unicodedata
from collections.abc import Iterable

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


# -- tags must not pass for ids or refs -------------------------------------------------------

# Latin look-alikes from other scripts (Cyrillic, Greek): a tag spelled with them next to an
# existing Latin one reads the same on screen but names another version.
_CONFUSABLES = str.maketrans({
    "а": "a", "в": "b", "е": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p", "с": "c", "т": "t",
    "у": "y", "х": "x", "і": "i", "ј": "j", "ѕ": "s", "ԁ": "d", "һ": "h", "ӏ": "l", "ԛ": "q", "ԝ": "w",
    "ɡ": "g", "ѵ": "v", "ү": "y", "ց": "g", "օ": "o", "ս": "u",
    "А": "A", "В": "B", "Е": "E", "К": "K", "М": "M", "Н": "H", "О": "O", "Р": "P", "С": "C", "Т": "T",
    "Х": "X", "У": "Y", "І": "I", "Ј": "J", "Ѕ": "S", "Ԁ": "D", "Һ": "H", "Ӏ": "I", "Ԛ": "Q", "Ԝ": "W",
    "α": "a", "ο": "o", "ρ": "p", "ν": "v", "ι": "i", "κ": "k", "τ": "t", "υ": "u", "χ": "x", "ε": "e",
    "Α": "A", "Β": "B", "Ε": "E", "Ζ": "Z", "Η": "H", "Ι": "I", "Κ": "K", "Μ": "M", "Ν": "N", "Ο": "O",
    "Ρ": "P", "Τ": "T", "Υ": "Y", "Χ": "X",
})
_HEXLIKE = re.compile(r"^[0-9a-fA-F]{4,64}$")
# The words of the ref grammar: a tag may not read like one (best:METRIC needs a colon, refused anyway).
_REF_WORDS = frozenset({"head", "latest"})


def confusable_skeleton(name: str) -> str:
    """What ``name`` looks like on screen: NFKC-folded, other scripts' Latin look-alikes mapped to Latin."""
    return unicodedata.normalize("NFKC", name).translate(_CONFUSABLES)


def validate_tag(tag: object, existing: Iterable[str] = ()) -> str:
    """Return ``tag`` if it is a safe, unambiguous tag name, else raise :class:`InvalidNameError`.

    Besides :func:`validate_name`: a tag must not look like a version id or id prefix (4 to 64 hex
    digits: ids win over tags, such a tag could never be reached and would read as an id), nor like
    a ref word (``HEAD``, ``latest``) in any case, width or script, nor like one of the
    ``existing`` tags it is not (``prоduction`` with a Cyrillic ``о`` next to ``production``).
    """
    tag = validate_name(tag, "tag")
    skeleton = confusable_skeleton(tag)
    if _HEXLIKE.match(tag) or _HEXLIKE.match(skeleton):
        raise InvalidNameError(f"tag {tag!r} looks like a version id (4-64 hex digits); ids win over tags")
    if skeleton.casefold() in _REF_WORDS or tag.casefold() in _REF_WORDS:
        raise InvalidNameError(f"tag {tag!r} looks like the ref {skeleton!r}; choose another name")
    for other in existing:
        if other != tag and confusable_skeleton(other) == skeleton:
            raise InvalidNameError(f"tag {tag!r} looks like the existing tag {other!r} but is spelled "
                                   "differently; choose another name")
    return tag


# -- pairing variables whose names changed ----------------------------------------------------

_NUMBERED = re.compile(r"_\d+$")
_DIGITS = re.compile(r"(\d+)")


def _skeleton(name: str) -> str:
    """The name without the numbers a framework appends (``dense_3/kernel`` -> ``dense/kernel``)."""
    return "/".join(_NUMBERED.sub("", part.split("#")[0]) for part in name.split("/"))


def _natural_key(name: str) -> list:
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in _DIGITS.split(name)]


def pair_names(left: Iterable[str], right: Iterable[str]) -> dict[str, str] | None:
    """Pair each name of ``left`` with one of ``right``; None when they cannot be paired safely.

    Equal names pair with each other. The rest (a re-run notebook cell numbered the layers anew:
    ``dense_3/kernel`` vs ``dense_7/kernel``) pair only with a name of the same kind (equal once
    the numbers are dropped), in the order of their numbers. The pairing depends only on the
    names (which the version id covers), never on the order a manifest lists them in, and a name
    that exists on both sides is never paired with another.
    """
    left, right = list(left), list(right)
    if len(left) != len(right):
        return None
    shared = set(left) & set(right)
    pairs = {name: name for name in left if name in shared}
    groups: dict[str, tuple[list[str], list[str]]] = {}
    for side, names in ((0, left), (1, right)):
        for name in names:
            if name not in shared:
                groups.setdefault(_skeleton(name), ([], []))[side].append(name)
    for mine, theirs in groups.values():
        if len(mine) != len(theirs):
            return None
        pairs.update(zip(sorted(mine, key=_natural_key), sorted(theirs, key=_natural_key), strict=True))
    return pairs


# The HEAD of a model in one notebook is the ref "<model>:<notebook>" (":" is never part of a
# name, so keys cannot collide); the plain model name is the shared HEAD of the API and the CLI.
HEAD_SEPARATOR = ":"
DEFAULT_WORKSPACE = "default"


def head_key(model: str, workspace: str | None) -> str:
    """The key of ``model``'s HEAD in ``workspace`` (a notebook), or the shared HEAD when None."""
    return f"{model}{HEAD_SEPARATOR}{workspace}" if workspace else model


def head_owner(key: str) -> tuple[str, str | None]:
    """(model, workspace or None) of a HEAD key."""
    model, _, workspace = key.partition(HEAD_SEPARATOR)
    return model, workspace or None


# A notebook's HEAD key ends in "=" and this many hex digits of a digest of its path.
_KEY_DIGITS = 12
_KEY = re.compile(rf"=[0-9a-f]{{{_KEY_DIGITS}}}$")
_UNSAFE = re.compile(r"[^\w.\-+@=]")
_LEADING = "._-+@="


def workspace_key(notebook: str | None, root: str | None) -> str | None:
    """The key of a notebook's own HEADs: its path relative to ``root`` (the folder holding the
    store; a relative ``notebook`` is taken as relative to it), readable (``exp1+train.ipynb``,
    cut from the left to fit a name), then ``=`` and 12 hex digits of a SHA-256 of that path:
    two notebooks with the same name in different folders, or with long names sharing their
    first 128 characters, never share a HEAD. A string that already is a key is returned as is.

    >>> workspace_key("/work/exp1/train.ipynb", "/work")
    'exp1+train.ipynb=a556864bb154'
    """
    if not notebook:
        return None
    text = str(notebook)
    if _KEY.search(text) and is_valid_name(text):
        return text
    path = text.replace("\\", "/")
    if root is not None and not posixpath.isabs(path):
        path = posixpath.join(str(root).replace("\\", "/"), path)
    path = posixpath.normpath(path)
    base = posixpath.normpath(str(root).replace("\\", "/")) if root is not None else None
    rel = posixpath.relpath(path, base) if base and path.startswith(base.rstrip("/") + "/") else path
    digest = hashlib.sha256(rel.encode("utf-8", "surrogatepass")).hexdigest()[:_KEY_DIGITS]
    readable = _UNSAFE.sub("_", rel.replace("/", "+")).lstrip(_LEADING)
    readable = readable[-(_MAX_LENGTH - _KEY_DIGITS - 1):].lstrip(_LEADING) or "notebook"
    return f"{readable}={digest}"


def workspace_name(notebook: str | None) -> str | None:
    """The HEAD key stores written before :func:`workspace_key` used: the notebook's file name made
    a safe name (``train.ipynb``), None without one. Read as a fallback, never written."""
    if not notebook:
        return None
    base = re.sub(r"[^\w.\-+@=]", "_", str(notebook).replace("\\", "/").rsplit("/", 1)[-1]).lstrip("._-+@=")
    base = base[:_MAX_LENGTH]
    return base if is_valid_name(base) else None
