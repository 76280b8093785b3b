"""Metadata read from files and remotes is untrusted: checked before it is indexed, neutralised
before it is shown.

A snapshot's ``/meta`` comes from whoever wrote the file (a teammate's shared store, a remote). It
is indexed only when every field has the shape a commit writes: a valid model name, a ``created``
that is a date, parents that are ids, bounded strings without control characters where a name
belongs, numeric metrics. Messages may hold newlines; the terminal control sequences they may also
hold (ANSI escapes that rewrite what ``mvc log`` printed) are shown escaped, never interpreted.
"""

from __future__ import annotations

import json
import numbers
import unicodedata
from datetime import datetime

from ..errors import InvalidMetricError
from .manifest import is_hash
from .metadata import validate_key
from .names import is_valid_name

MAX_MESSAGE = 100_000  # characters; a commit refuses longer messages too
MAX_SHORT = 256  # author, framework, created
MAX_PARENTS = 10_000
MAX_META_BYTES = 64 * 1024 * 1024  # provenance may hold the code of many cells


def validate_message(message: object) -> str:
    """A commit message: a string of at most :data:`MAX_MESSAGE` characters (None is empty)."""
    if message is None:
        return ""
    if not isinstance(message, str):
        raise InvalidMetricError(f"the message must be a string, not {type(message).__name__}")
    if len(message) > MAX_MESSAGE:
        raise InvalidMetricError(f"the message has {len(message):,} characters; at most {MAX_MESSAGE:,} are kept "
                                 "(put long notes in a file and name it in params)")
    return message


def _short_text(value: object) -> bool:
    return isinstance(value, str) and len(value) <= MAX_SHORT and not _has_control(value)


def _has_control(text: str) -> bool:
    return any(unicodedata.category(ch) in ("Cc", "Cf") for ch in text)


def metadata_problem(meta: object) -> str | None:
    """What makes ``meta`` unfit to index (one short phrase), or None when it is well formed."""
    if not isinstance(meta, dict):
        return "metadata is not a JSON object"
    if not is_valid_name(meta.get("name")):
        return "invalid model name"
    created = meta.get("created")
    try:
        if not _short_text(created):
            raise ValueError(created)
        datetime.fromisoformat(created)
    except (TypeError, ValueError):
        return "'created' is not a date"
    parents = meta.get("parents", [])
    if not isinstance(parents, list) or len(parents) > MAX_PARENTS \
            or not all(isinstance(p, str) and is_hash(p) for p in parents):
        return "'parents' is not a list of version ids"
    message = meta.get("message", "")
    if message is not None and (not isinstance(message, str) or len(message) > MAX_MESSAGE):
        return f"'message' is not a string of at most {MAX_MESSAGE:,} characters"
    for key in ("author", "framework"):
        if key in meta and meta[key] is not None and not _short_text(meta[key]):
            return f"{key!r} is not a short string without control characters"
    tags = meta.get("tags", [])
    if not isinstance(tags, list) or not all(is_valid_name(t) for t in tags):
        return "'tags' is not a list of valid names"
    for key in ("metrics", "params"):
        problem = _mapping_problem(key, meta.get(key))
        if problem:
            return problem
    if len(json.dumps(meta, default=str)) > MAX_META_BYTES:
        return f"metadata is larger than {MAX_META_BYTES // 2**20} MiB"
    return None


def _mapping_problem(key: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        return f"{key!r} is not a mapping"
    for name, item in value.items():
        try:
            validate_key(name, key[:-1])
        except InvalidMetricError:
            return f"{key!r} has an invalid name {str(name)[:20]!r}"
        if key == "metrics" and (isinstance(item, bool) or not isinstance(item, numbers.Real)):
            return f"metric {name!r} is not a number"
    return None


def neutralise(text: object) -> str:
    """``text`` safe to print on a terminal: control and format characters (ESC, BEL, bidi
    overrides...) shown as ``\\x1b``-style escapes; newlines and tabs kept."""
    text = "" if text is None else str(text)
    if not _has_control(text.replace("\n", "").replace("\t", "")):
        return text
    return "".join(ch if ch in "\n\t" or unicodedata.category(ch) not in ("Cc", "Cf")
                   else (f"\\x{ord(ch):02x}" if ord(ch) < 256 else f"\\u{ord(ch):04x}") for ch in text)


__all__ = ["MAX_MESSAGE", "metadata_problem", "neutralise", "validate_message"]
