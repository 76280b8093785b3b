"""Messages built from other libraries' errors: whole sentences, never cut mid-word."""

from __future__ import annotations


def first_sentence(exc: BaseException, limit: int = 160) -> str:
    """The first line of ``exc`` without its final period, cut at a word boundary (`` ...``) when long."""
    text = str(exc).strip()
    text = text.splitlines()[0].strip().rstrip(".") if text else type(exc).__name__
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0].rstrip(",;:") + " ..."
