"""Tab completion for every ``%mvc_*`` magic: refs, tags, model variables, data variables, flags.

One IPython matcher (for lines starting with ``%mvc_``) serves all magics, including ones other
modules add later; what to offer depends on the argument position (see
:data:`POSITIONALS`) or the flag before the cursor (see :data:`FLAG_VALUES`). The candidate lists
come from plain functions (:meth:`Repo.ref_names`, :func:`model_variables`...), testable without
a shell. :func:`install_completer` returns the function that removes the hook again.
"""

from __future__ import annotations

import itertools
import re
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..adapters import ADAPTERS
from ..api.repo import Repo, default_store_path
from ..core.merge_plan import METHODS
from ..core.publication import TARGETS
from .session import MVCSession

# What each positional argument of a magic is ("*": any number); magics not listed get refs and
# model variables at every position.
POSITIONALS: dict[str, list[str]] = {
    "mvc_init": [],
    "mvc_commit": ["model"],
    "mvc_checkout": ["ref", "model"],
    "mvc_log": ["model"],
    "mvc_tag": ["ref", "tag"],
    "mvc_status": [],
    "mvc_autocommit": ["model", "onoff"],
    "mvc_show": ["ref"],
    "mvc_compare": ["ref*"],
    "mvc_merge": ["ref*"],
    "mvc_export": ["ref"],
    "mvc_rm": ["ref"],
    "mvc_publish": ["ref", "target", "none"],
}

# What the value after a flag is.
FLAG_VALUES: dict[str, str] = {
    "--model": "model", "--data": "data*", "--as": "none", "--into": "model", "--tag": "tag*",
    "--baseline": "ref", "--eval": "callable", "--method": "method", "-m": "none", "--message": "none",
    "--metric": "none", "--param": "none", "--weights": "none", "-n": "none",
    "--base": "ref", "--density": "none", "--scale": "none", "--t": "none", "--seed": "none",
    "--alias": "none", "--artifact": "none",
}


def model_variables(namespace: dict) -> list[str]:
    """Names of the user's variables that hold a model some adapter supports."""
    names = []
    for name, value in list(namespace.items()):
        if name.startswith("_") or not isinstance(name, str):
            continue
        if any(_handles(adapter, value) for adapter in ADAPTERS):
            names.append(name)
    return sorted(names)


def _handles(adapter: Any, value: Any) -> bool:
    try:
        return adapter.handles(value) and not (isinstance(value, dict) and not value)
    except Exception:  # odd objects in the namespace never break completion
        return False


def data_variables(namespace: dict) -> list[str]:
    """Names of variables that ``--data`` can fingerprint (arrays, data frames, lists, tuples)."""
    names = []
    for name, value in list(namespace.items()):
        if name.startswith("_") or name in ("In", "Out"):
            continue
        if isinstance(value, np.ndarray | list | tuple) or type(value).__name__ in ("DataFrame", "Series"):
            names.append(name)
    return sorted(names)


def magic_flags(shell: Any, magic: str) -> list[str]:
    """The option strings of a magic declared with ``@magic_arguments`` (empty otherwise)."""
    function = shell.find_line_magic(magic)
    parser = getattr(getattr(function, "__func__", function), "parser", None)
    if parser is None:
        return []
    return sorted({s for action in parser._actions for s in action.option_strings if s.startswith("--")})


def complete_line(session: MVCSession, line: str) -> list[str]:
    """Full-word completions for the last word of ``line`` (the text up to the cursor)."""
    match = re.match(r"\s*%?(mvc_\w+)\s+(.*)$", line, re.S)
    if not match:
        return []
    magic, rest = match.group(1), match.group(2)
    try:
        words = shlex.split(rest)
    except ValueError:
        words = rest.split()
    if rest and not rest[-1].isspace() and words:
        current, before = words[-1], words[:-1]
    else:
        current, before = "", words
    if current.startswith("-"):
        return [f for f in magic_flags(session.shell, magic) if f.startswith(current)]
    kind = _kind_at(magic, before)
    candidates = _candidates(session, kind, _model_named(session, magic, before))
    return [c for c in candidates if c.startswith(current)]


def _kind_at(magic: str, before: list[str]) -> str:
    """What the word being typed is: the value of the flag before it, or a positional kind."""
    pending: str | None = None  # the kind of value the last flag still takes
    positionals = 0
    for word in before:
        if word in FLAG_VALUES:
            pending = FLAG_VALUES[word]
        elif word.startswith("-"):
            pending = None  # a switch such as --force: takes no value
        elif pending is not None:
            if not pending.endswith("*"):  # this word was the flag's only value
                pending = None
        else:
            positionals += 1
    if pending is not None:
        return pending.rstrip("*")
    kinds = POSITIONALS.get(magic, ["refmodel*"])
    if positionals < len(kinds):
        return kinds[positionals].rstrip("*")
    return kinds[-1].rstrip("*") if kinds and kinds[-1].endswith("*") else "none"


def _model_named(session: MVCSession, magic: str, before: list[str]) -> str | None:
    """The model whose refs to offer: ``--model M``, a model variable on the line, or the only one."""
    for flag, value in itertools.pairwise(before):
        if flag == "--model":
            return value
    for word in before:
        if word.isidentifier() and word in model_variables({word: session.namespace.get(word)}):
            return word
    repo = _existing_repo(session)
    models = repo.models() if repo else []
    return models[0] if len(models) == 1 else None


def _existing_repo(session: MVCSession) -> Repo | None:
    """The session's store, or None when it does not exist yet (completing never creates one)."""
    path = session.store_path or default_store_path(session.notebook_path())
    return session.repo if session._repo is not None or Path(path).is_dir() else None


def _candidates(session: MVCSession, kind: str, model: str | None) -> list[str]:
    namespace = session.namespace
    repo = _existing_repo(session)
    if kind == "model":
        tracked = [m for m in repo.models() if m in namespace] if repo else []
        return list(dict.fromkeys(model_variables(namespace) + tracked))
    if kind in ("ref", "refmodel"):
        refs = repo.ref_names(model) if repo else []
        return refs + model_variables(namespace) if kind == "refmodel" else refs
    if kind == "tag":
        return repo.tag_names(model) if repo else []
    if kind == "data":
        return data_variables(namespace)
    if kind == "onoff":
        return ["on", "off"]
    if kind == "target":
        return list(TARGETS)
    if kind == "method":
        return list(METHODS)
    if kind == "callable":
        return sorted(n for n, v in namespace.items() if callable(v) and not n.startswith("_")
                      and not isinstance(v, type) and n not in ("exit", "quit", "get_ipython"))
    return []


def install_completer(shell: Any, session: MVCSession) -> Callable[[], None]:
    """Add the ``%mvc_*`` matcher to ``shell``'s completer; return the function that removes it.

    Uses IPython's matcher API v2 (``Completer.custom_matchers``) so that, when it has
    candidates, it suppresses the other matchers (Jedi would offer every global name after
    ``best:``); on other lines, or with nothing to offer (a path for ``%mvc_init``), it stays out
    of the way.
    """
    from IPython.core.completer import SimpleCompletion, context_matcher

    completer = shell.Completer

    @context_matcher()
    def mvc_matcher(context: Any) -> dict:
        line = context.text_until_cursor
        if not re.match(r"\s*%?mvc_\w+\s", line):
            return {"completions": [], "suppress": False}
        try:
            words = complete_line(session, line)
        except Exception:  # a completion must never raise into the frontend
            return {"completions": [], "suppress": False}
        # IPython replaces only the token after the last delimiter (``best:v`` -> ``v``).
        typed = "" if line[-1:].isspace() else line.split()[-1]
        cut = len(typed) - len(context.token)
        texts = [w[cut:] for w in words] if 0 < cut <= len(typed) else words
        return {"completions": [SimpleCompletion(text, type="mvc") for text in texts],
                "suppress": bool(texts), "ordered": True}

    completer.custom_matchers.append(mvc_matcher)

    def remove() -> None:
        while mvc_matcher in completer.custom_matchers:
            completer.custom_matchers.remove(mvc_matcher)

    return remove
