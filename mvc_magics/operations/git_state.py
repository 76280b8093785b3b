"""The git state of the code a commit is made from, read with the ``git`` binary (no new dependency).

Every commit (:mod:`mvc_magics.operations.commit`) starts a :class:`GitStateAhead`, so the magics, the
API, the training callbacks, autocommit and merges all record it. Where to look: the folder of the notebook
(or script) the provenance names, else the working directory. No git, not a work tree, a repository
without commits, git failing or taking longer than :data:`GIT_TIMEOUT`: no ``git`` key and no error.
The store folder is excluded from every git command, so a ``.mvc`` inside the work tree never makes
the tree dirty nor enters the diff. What the output means is decided in
:mod:`mvc_magics.core.git_provenance`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..core.git_provenance import MAX_DIFF_CHARS, bounded_diff, choose_remote, git_entry, parse_status

GIT_SETTING_ENV = "MVC_GIT"  # off: record no git state; nodiff: record it without the diff (it may hold secrets)
GIT_TIMEOUT = 3.0  # seconds for each git command: a commit never waits long for its provenance
# No prompt for credentials, and no lock on the git index: a commit never blocks the user's own git.
_GIT_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"}


class GitStateAhead:
    """The git state read in a thread while a commit hashes and stages its tensors.

    A commit starts it first and asks :meth:`provenance` only when it writes a new version: a commit
    of content already stored (an unchanged re-commit) never waits for git.
    """

    def __init__(self, provenance: Mapping[str, Any] | None, store_path: Path, start: bool = True) -> None:
        """``start`` False: git runs from :meth:`start` on (or when :meth:`provenance` is asked)."""
        self._given = provenance
        self._state: dict[str, Any] | None = None
        self._thread: threading.Thread | None = None
        if (provenance is not None and "git" in provenance) or git_setting() == "off":
            return  # given by the caller (kept as given), or switched off
        self._thread = threading.Thread(target=self._read, args=(Path(store_path), Path.cwd()), daemon=True,
                                        name="mvc-git-state")
        if start:
            self.start()

    def start(self) -> None:
        """Run git now, in the thread (once)."""
        if self._thread is not None and self._thread.ident is None:
            self._thread.start()

    def _read(self, store_path: Path, cwd: Path) -> None:
        try:
            self._state = git_state(store_path, self._given or {}, cwd)
        except Exception:  # provenance is best effort: never a reason for a commit to fail
            self._state = None

    def provenance(self) -> dict[str, Any] | None:
        """The given provenance plus its ``git`` entry (waits for git, at most a few timeouts)."""
        if self._thread is not None:
            self.start()
            self._thread.join()
        if self._state is None:
            return dict(self._given) if self._given is not None else None
        return {**(self._given or {}), "git": self._state}


def with_git_state(provenance: Mapping[str, Any] | None, store_path: Path) -> dict[str, Any] | None:
    """``provenance`` plus its ``git`` entry when the code lives in a git work tree (a given one is kept)."""
    return GitStateAhead(provenance, store_path).provenance()


def git_setting() -> str:
    """``$MVC_GIT``: ``off`` (no git state), ``nodiff`` (commit, branch, dirty, remote, path; no diff), else ``on``."""
    value = os.environ.get(GIT_SETTING_ENV, "").strip().lower()
    if value in ("0", "off", "false", "no"):
        return "off"
    return "nodiff" if value == "nodiff" else "on"


def git_state(store_path: Path, provenance: Mapping[str, Any], cwd: Path | None = None) -> dict[str, Any] | None:
    """The ``git`` provenance entry (see :func:`mvc_magics.core.git_provenance.git_entry`), or None.

    ``cwd``: the working directory of the commit (default: the process's current one)."""
    git = shutil.which("git")
    if git is None:
        return None
    folder, file = _location(provenance, cwd or Path.cwd())
    try:
        top = _run(git, folder, "rev-parse", "--show-toplevel")
        if not top:
            return None
        root = Path(top.strip()).resolve()
        spec = _store_exclusion(root, store_path)
        # The remotes are read by a second git beside the status (two processes at once, not in turn).
        remotes_ahead: list[str | None] = [None]
        reader = threading.Thread(target=lambda: remotes_ahead.__setitem__(0, _run(
            git, root, "config", "--get-regexp", r"^(remote\..*\.url|branch\..*\.remote)$")), daemon=True)
        reader.start()
        status = _run(git, root, "status", "--porcelain=v2", "--branch", "--untracked-files=no",
                      "--ignore-submodules=dirty", "--", *spec)
        reader.join()
        if status is None:
            return None
        commit, branch, dirty = parse_status(status)
        if commit is None:  # no commit yet: nothing to point to
            return None
        remotes = remotes_ahead[0] or ""
        diff = _diff(git, root, spec) if dirty and git_setting() == "on" else None
    except OSError:
        return None
    where = file if file is not None else folder
    try:
        path = where.resolve().relative_to(root).as_posix()
    except ValueError:
        path = None
    return git_entry(commit, branch, dirty, choose_remote(remotes, branch), path, diff)


def _location(provenance: Mapping[str, Any], cwd: Path) -> tuple[Path, Path | None]:
    """The folder git is asked about, and the notebook or script file in it (None: the working directory)."""
    for key in ("notebook", "script"):
        value = provenance.get(key)
        if isinstance(value, str) and value:
            file = Path(value).expanduser()
            if not file.is_absolute():
                file = cwd / file
            if file.parent.is_dir():
                return file.parent, file
    return cwd, None


def _store_exclusion(root: Path, store_path: Path) -> list[str]:
    """A pathspec leaving the store out, when it lies inside the work tree."""
    try:
        relative = Path(store_path).resolve().relative_to(root)
    except ValueError:
        return []
    return [f":(top,exclude){relative.as_posix()}"] if relative.parts else []


def _command(git: str, folder: Path, args: tuple[str, ...]) -> list[str]:
    # Repository config may not run programs here: no external diff or textconv, no pager.
    return [git, "--no-pager", "-C", str(folder), "-c", "core.quotePath=false", *args]


def _run(git: str, folder: Path, *args: str) -> str | None:
    """git's output, or None when it fails or times out."""
    try:
        done = subprocess.run(_command(git, folder, args), capture_output=True, stdin=subprocess.DEVNULL,
                              timeout=GIT_TIMEOUT, env={**os.environ, **_GIT_ENV}, check=False)
    except subprocess.TimeoutExpired:
        return None
    if done.returncode != 0:
        return None
    return done.stdout.decode("utf-8", "replace")


def _diff(git: str, root: Path, spec: list[str]) -> str | None:
    """``git diff HEAD`` of the tracked files, read up to :data:`MAX_DIFF_CHARS` (then cut, with a note)."""
    args = ("diff", "HEAD", "--no-color", "--no-ext-diff", "--no-textconv", "--", *spec)
    with subprocess.Popen(_command(git, root, args), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                          stdin=subprocess.DEVNULL, env={**os.environ, **_GIT_ENV}) as proc:
        timed_out = threading.Event()

        def stop() -> None:
            timed_out.set()
            proc.kill()

        timer = threading.Timer(GIT_TIMEOUT, stop)
        timer.start()
        try:
            data = proc.stdout.read(MAX_DIFF_CHARS + 1) if proc.stdout else b""
        finally:
            timer.cancel()
            if proc.poll() is None:
                proc.kill()  # more than is kept: the rest is never read
            proc.wait()
    complete = len(data) <= MAX_DIFF_CHARS
    if timed_out.is_set() or (complete and proc.returncode != 0):
        return None
    return bounded_diff(data.decode("utf-8", "replace"), complete)
