"""The ``git`` entry of a version's provenance, built from what the ``git`` binary printed (pure).

:mod:`mvc_magics.operations.git_state` runs git; the functions here read its output, so the rules
(what counts as dirty, how a remote URL loses its credentials, where a diff is cut) have one home
and are tested without a repository::

    {"commit": "64a5b0e…", "branch": "main", "dirty": True, "remote": "https://github.com/org/repo.git",
     "path": "notebooks/train.ipynb", "diff": "diff --git a/train.py b/train.py\\n…"}
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

# How much of ``git diff HEAD`` one version keeps. W&B keeps a bounded patch too: the provenance is
# also stored in the index and read by every log, so a notebook with large outputs must not bloat it.
MAX_DIFF_CHARS = 64_000

_SHA = re.compile(r"[0-9a-f]{40}([0-9a-f]{24})?")


def parse_status(text: str) -> tuple[str | None, str | None, bool]:
    """``(commit, branch, dirty)`` from ``git status --porcelain=v2 --branch`` output.

    ``commit`` is None before the first commit; ``branch`` None when HEAD is detached; ``dirty``
    True when any entry (a changed tracked file: git ran with ``--untracked-files=no``) is listed.

    >>> parse_status("# branch.oid " + "a" * 40 + "\\n# branch.head main\\n1 .M N... 100644 100644 100644 x y f.py\\n")
    ('aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa', 'main', True)
    """
    commit = branch = None
    dirty = False
    for line in text.splitlines():
        if line.startswith("# branch.oid "):
            value = line[len("# branch.oid "):].strip()
            commit = value if _SHA.fullmatch(value) else None
        elif line.startswith("# branch.head "):
            value = line[len("# branch.head "):].strip()
            branch = None if value == "(detached)" else value
        elif line and not line.startswith("#"):
            dirty = True
    return commit, branch, dirty


def strip_credentials(url: str) -> str:
    """A remote URL without user name, password or query (where tokens are put).

    ``scp``-like addresses (``git@github.com:org/repo.git``) keep their user: it names the account
    ssh logs in as, not a secret. Anything else with ``user:password@`` or ``token@`` loses it.

    >>> strip_credentials("https://x-access-token:ghp_secret@github.com/org/repo.git")
    'https://github.com/org/repo.git'
    >>> strip_credentials("git@github.com:org/repo.git")
    'git@github.com:org/repo.git'
    """
    url = url.strip()
    if "://" not in url:
        return url
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:  # unparseable: keep nothing that could be a secret
        return ""
    if ":" in host:  # an IPv6 literal goes back in brackets
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port else host
    if parts.scheme == "ssh" and parts.username and parts.password is None:
        netloc = f"{parts.username}@{netloc}"  # ssh://git@host/...: the login name, not a secret
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def choose_remote(config_lines: str, branch: str | None) -> str | None:
    """The URL of the remote the branch tracks, else ``origin``, else the first one, from the output of
    ``git config --get-regexp "^(remote\\..*\\.url|branch\\..*\\.remote)$"``."""
    urls: dict[str, str] = {}
    tracked: str | None = None
    for line in config_lines.splitlines():
        key, _, value = line.partition(" ")
        if key.startswith("remote.") and key.endswith(".url"):
            urls.setdefault(key[len("remote."):-len(".url")], value)
        elif branch is not None and key == f"branch.{branch}.remote":
            tracked = value
    for name in (tracked, "origin"):
        if name in urls:
            return urls[name]
    return next(iter(urls.values()), None)


def bounded_diff(diff: str, complete: bool = True, limit: int = MAX_DIFF_CHARS) -> str:
    """``diff`` when it is ``complete`` and fits ``limit`` characters, else its first whole lines and a
    last line saying it was cut (``complete`` False: git printed more than was read)."""
    if complete and len(diff) <= limit:
        return diff
    cut = diff[:limit]
    cut = cut[:cut.rfind("\n") + 1] or cut  # whole lines only
    return cut + f"# … diff cut after {len(cut)} characters: mvc keeps at most {limit} (the rest is not recorded)\n"


def git_entry(commit: str, branch: str | None, dirty: bool, remote: str | None, path: str | None,
              diff: str | None) -> dict[str, Any]:
    """The ``provenance["git"]`` dict: ``diff`` only when dirty, ``remote`` without credentials."""
    entry: dict[str, Any] = {"commit": commit, "branch": branch, "dirty": dirty}
    if remote:
        entry["remote"] = strip_credentials(remote) or None
    if path is not None:
        entry["path"] = path
    if dirty and diff:
        entry["diff"] = diff
    return entry


def describe(entry: Any) -> str | None:
    """One line for ``%mvc_show``: ``64a5b0e1 on main, dirty (diff: 12 lines)``; None without git state."""
    if not isinstance(entry, dict) or not isinstance(entry.get("commit"), str):
        return None
    text = entry["commit"][:12]
    text += f" on {entry['branch']}" if entry.get("branch") else " (detached HEAD)"
    if entry.get("dirty"):
        diff = entry.get("diff")
        text += f", dirty (diff: {str(diff).count(chr(10))} lines)" if diff else ", dirty"
    else:
        text += ", clean"
    return text


def log_mark(entry: Any) -> str:
    """What ``%mvc_log`` shows in its ``git`` column: the short commit, ``+dirty`` when made from changes."""
    if not isinstance(entry, dict) or not isinstance(entry.get("commit"), str):
        return ""
    return entry["commit"][:8] + ("+dirty" if entry.get("dirty") else "")
