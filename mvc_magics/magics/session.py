"""State shared by the magic classes of one IPython shell: the store and the namespace."""

from __future__ import annotations

import functools
import os
import re
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from IPython.core.error import UsageError

from ..adapters import adapter_for
from ..api.repo import Repo, default_store_path
from ..core.provenance import CellRecorder
from ..core.refs import parse_ref
from ..errors import MVCError, missing_package_message

F = TypeVar("F", bound=Callable[..., Any])


def user_errors(func: F) -> F:
    """Show expected errors (:class:`MVCError`) as a one-line ``UsageError``, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except MVCError as exc:
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UsageError(message) from None
        except ModuleNotFoundError as exc:  # an optional package (a framework, the widgets) not installed
            message = missing_package_message(exc)
            if message is None:
                raise
            raise UsageError(message) from None
        except KeyboardInterrupt:
            raise UsageError("interrupted; the store is unchanged by the unfinished operation") from None

    return wrapper  # type: ignore[return-value]


class MVCSession:
    """The store of one shell (opened lazily) and access to the user's variables."""

    def __init__(self, shell: Any) -> None:
        self.shell = shell
        self.store_path: Path | None = None
        self._repo: Repo | None = None
        self.pending: tuple[str, ...] = ()  # background writes the last magic waited for
        self.recorder = CellRecorder()  # executed cells, for the provenance of commits

    @property
    def namespace(self) -> dict:
        return self.shell.user_ns

    def trust(self, unsafe: bool) -> dict:
        """``--unsafe``: rebuild user classes, those of the notebook first (``unsafe``/``classes`` of the API)."""
        if not unsafe:
            return {}
        return {"unsafe": True, "classes": {k: v for k, v in self.namespace.items() if isinstance(v, type)}}

    def notebook_path(self) -> str | None:
        """The notebook's path, from ``__session__`` (Jupyter/VS Code) or ``JPY_SESSION_NAME``."""
        session = self.namespace.get("__session__")
        if isinstance(session, str) and session:
            return session
        return os.environ.get("JPY_SESSION_NAME") or None

    @property
    def repo(self) -> Repo:
        """The store, opened on first use at the configured or default path."""
        path = self.store_path or default_store_path(self.notebook_path())
        if self._repo is None or self._repo.path != Path(path):
            self.close()
            self._repo = Repo(path)
        # HEAD is per notebook: this notebook's own ref (the history is shared by everyone).
        self._repo.store.workspace = self.workspace()
        # Commits a training loop handed off are finished before any magic reads the store, and
        # what one of them hit is said now, in one line.
        self.pending = tuple(self._repo.store.background.pending())  # for %mvc_status to name
        self._repo.store.background.settle()
        self._repo.store.background.raise_error()
        return self._repo

    def workspace(self) -> str | None:
        """The notebook whose HEADs the magics read and move (None outside a notebook: the shared HEAD);
        the store keys them by its path (core.names.workspace_key)."""
        return self.notebook_path()

    def init(self, path: str | os.PathLike | None) -> Repo:
        """Use (and create) the store at ``path``; None goes back to the default.

        The new store is opened first: when that fails, the session keeps the store it had.
        """
        store_path = Path(path).expanduser() if path else None
        repo = Repo(store_path or default_store_path(self.notebook_path()), workspace=self.workspace())
        self.close()
        self.store_path, self._repo = store_path, repo
        return repo

    def close(self) -> None:
        if self._repo is not None:
            self._repo.close()
            self._repo = None

    def variable(self, name: str) -> Any:
        """The user's variable ``name``; a one-line error when it does not exist."""
        if not name.isidentifier():
            raise UsageError(f"{name!r} is not a variable name")
        if name not in self.namespace:
            raise UsageError(f"no variable named {name!r} in the notebook")
        return self.namespace[name]

    def configured_model(self) -> str:
        """``%config MVCMagics.default_model``, or "" when not set."""
        manager = getattr(self.shell, "magics_manager", None)
        core = manager.registry.get("MVCMagics") if manager is not None else None
        return str(getattr(core, "default_model", "") or "")

    def model_for_ref(self, given: str | None = None, ref: str | None = None) -> str | None:
        """The model history a ref is resolved in: the one rule every magic follows.

        The given name (``--model``), else the configured default model, else (for a tag or id
        prefix, which name their version in any history) None: the resolver searches every model.
        Else the only model in the store, else the only tracked model present in the notebook;
        None lets the resolver list the models.
        """
        if given:
            return given
        configured = self.configured_model()
        if configured:
            return configured
        if ref is not None and _names_a_version(ref):
            return None
        models = self.repo.models()
        if len(models) <= 1:
            return models[0] if models else None
        present = [m for m in models if m in self.namespace]
        return present[0] if len(present) == 1 else None

    def default_model(self) -> str:
        """The model variable meant when none is named: the configured one, else the only tracked one
        present, else (nothing committed from here yet) the only model variable in the notebook."""
        configured = self.configured_model()
        if configured:
            return configured
        present = [n for n in self.repo.models() if n in self.namespace]
        if len(present) == 1:
            return present[0]
        if present:
            raise UsageError(f"name the model: several tracked models are present ({', '.join(present)})")
        candidates = self.model_variables()
        if len(candidates) == 1:
            return candidates[0]
        if not candidates:
            raise UsageError("name the model variable (no model is in the notebook yet)")
        raise UsageError(f"name the model: the notebook holds several ({', '.join(candidates[:8])})")

    def model_variables(self) -> list[str]:
        """User variables that hold a model some adapter can version (hidden and ``_`` names skipped)."""
        hidden = getattr(self.shell, "user_ns_hidden", {})
        found = []
        for key, value in list(self.namespace.items()):
            # (isinstance, not ``value == {}``: an array or a DataFrame compares element-wise)
            if key.startswith("_") or key in hidden or not key.isidentifier() or (isinstance(value, dict)
                                                                                  and not value):
                continue
            try:
                adapter_for(value)
            except Exception:  # any object in a notebook may be probed; one that fails is no model
                continue
            found.append(key)
        return found


def _names_a_version(ref: str) -> bool:
    """A tag or an id prefix (not HEAD, latest or best:, which need a model's history)."""
    try:
        return parse_ref(ref).kind == "name"
    except MVCError:
        return False


# "$name" as a whole argument or a value (K=$name, a,$b): IPython did not expand it.
_UNEXPANDED = re.compile(r"(?:^|[=,])(\$[A-Za-z_]\w*)")


def parse_line(magic: Callable[..., Any], line: str) -> Any:
    """Parse a magic's argument line with shell quoting (``-m "two words"``) into its arguments.

    IPython's ``parse_argstring`` keeps quote characters on POSIX; users expect them removed.
    A ``#`` outside quotes starts a comment, as in Python. Bad flags, unbalanced quotes and
    ``$var`` left unexpanded by IPython become a one-line ``UsageError``.
    """
    try:
        argv = shlex.split(line, comments=True, posix=True)  # "# a comment" ends the line
    except ValueError as exc:
        raise UsageError(f"cannot parse the arguments: {exc}") from None
    leftover = next((m.group(1) for a in argv for m in [_UNEXPANDED.search(a)] if m), None)
    if leftover:
        # IPython skips all $-expansion in a line it cannot format (e.g. one with {x:.0%}).
        raise UsageError(f"{leftover} was not expanded by IPython; put the value in a variable "
                         "first, or remove {{...}} format specs from the line")
    try:
        # Options may stand between positionals: ``%mvc_merge A --model X B``.
        return magic.parser.parse_intermixed_args(argv)
    except TypeError:  # a parser argparse cannot intermix (e.g. nargs=REMAINDER)
        return magic.parser.parse_args(argv)
