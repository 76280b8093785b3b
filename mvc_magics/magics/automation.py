"""%mvc_autocommit (commit after every cell that changed the weights) and %mvc_show (provenance).

The cell hooks are returned by :meth:`AutomationMagics.event_hooks`; ``load`` registers them and
``unload`` removes them, so ``%reload_ext`` never doubles them.
"""

from __future__ import annotations

import sys
from typing import Any

from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments

from ..adapters import adapter_for
from ..core.details import VersionDetails
from ..core.provenance import fingerprint_all
from ..core.retention import RetentionPolicy
from ..core.tables import Table
from ..errors import UnsupportedModelError
from .capture import commit_from_notebook
from .core import commit_line
from .output import is_rich
from .session import MVCSession, parse_line, user_errors


def first_line(source: str, limit: int = 120) -> str:
    """The first non-blank line of a cell (the autocommit message)."""
    line = next((s.strip() for s in source.splitlines() if s.strip()), "")
    return line if len(line) <= limit else line[: limit - 1] + "…"


class AutocommitList(list):
    """``%mvc_autocommit`` with no arguments: each model with autocommit state and HEAD."""

    def table(self) -> Table:
        return Table(["model", "autocommit", "HEAD", "data"], [list(row) for row in self])

    def __str__(self) -> str:
        return self.table().to_text() if self else "autocommit is off for every model (%mvc_autocommit MODEL on)"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(str(self))


@magics_class
class AutomationMagics(Magics):
    """Automatic commits after cells that change a model, and the provenance of versions."""

    def __init__(self, shell: Any, session: MVCSession) -> None:
        super().__init__(shell)
        self.session = session
        self.autocommit: dict[str, list[str]] = {}  # model name -> data variables to fingerprint
        self.keep: dict[str, RetentionPolicy] = {}  # model name -> retention applied after each autocommit
        self._warned: set[str] = set()
        # The execution number the next stored cell gets. IPython 9.18 increments the counter
        # before pre_run_cell, older releases after post_run_cell; both agree on its value between
        # two cells (at load outside a cell, and after each cell), so it is read there.
        self._next_number = shell.execution_count

    def close(self) -> None:
        """Called by unload: a hook already queued for the running cell must do nothing more."""
        self.autocommit.clear()
        self.keep.clear()

    def event_hooks(self) -> list[tuple[str, Any]]:
        """(event, callback) pairs for ``load`` to register and ``unload`` to remove."""
        return [("pre_run_cell", self._before_cell), ("post_run_cell", self._after_cell)]

    # -- cell hooks ---------------------------------------------------------------------------

    def _before_cell(self, info: Any) -> None:
        number = self._next_number if getattr(info, "store_history", False) else None
        self.session.recorder.started(getattr(info, "raw_cell", "") or "", number)

    def _after_cell(self, result: Any) -> None:
        self._next_number = self.shell.execution_count
        recorder = self.session.recorder
        recorder.finished(bool(getattr(result, "success", True)))
        try:
            for name, data in list(self.autocommit.items()):
                self._autocommit(name, data, result)
        finally:
            recorder.idle()

    def _autocommit(self, name: str, data: list[str], result: Any) -> None:
        """Commit ``name`` when the cell changed its weights (one hash pass when it did not)."""
        model = self.session.namespace.get(name)
        if model is None:
            return
        try:
            adapter_for(model)
            repo = self.session.repo
            if not repo.is_modified(model, repo.head(name)):
                return
            info = getattr(result, "info", None)
            message = first_line(getattr(info, "raw_cell", "") or "") or "autocommit"
            if not getattr(result, "success", True):
                error = result.error_in_exec or result.error_before_exec
                message += f" [cell failed: {type(error).__name__}]"
            version = commit_from_notebook(self.session, model, name, data, message=message, source="autocommit")
            retained = repo.gc(keep=self.keep[name], name=name) if name in self.keep else None
        except UnsupportedModelError:
            return  # not (or not yet) a model: e.g. an unbuilt Keras model
        except Exception as exc:  # a hook must never break the user's cell
            if name not in self._warned:
                self._warned.add(name)
                text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                print(f"mvc autocommit of {name!r} failed: {text}", file=sys.stderr)
            return
        self._warned.discard(name)
        print(f"autocommit: {commit_line(version)}")
        if retained is not None and retained.removed:
            print(f"autocommit: {retained.policy} removed {len(retained.removed)} version(s), "
                  f"freed {retained.bytes_freed} bytes")

    # -- %mvc_autocommit ----------------------------------------------------------------------

    @line_magic
    @magic_arguments()
    @argument("model", nargs="?", default=None, help="the model variable (none: list the models)")
    @argument("state", nargs="?", default="on", choices=["on", "off"], help="on (default) or off")
    @argument("--data", nargs="+", action="append", metavar="VAR",
              help="data variables to fingerprint in each commit's provenance")
    @argument("--keep", action="append", default=None, metavar="RULE",
              help="retention policy applied after each autocommit: best:METRIC:N, last:N, tagged (repeatable)")
    @user_errors
    def mvc_autocommit(self, line: str):
        """Commit MODEL automatically after every cell that changes its weights.

        The message is the cell's first line and the metrics those of the last ``fit``; cells that
        do not touch the weights create nothing. Turning it on commits the current weights first
        if they are not stored yet. ``--data x_train y_train`` fingerprints that data in every
        commit. With no arguments, lists the models and their state.
        """
        args = parse_line(self.mvc_autocommit, line)
        if args.model is None:
            return self._listing()
        name = args.model
        if args.state == "off":
            self.autocommit.pop(name, None)
            self.keep.pop(name, None)
            print(f"autocommit off for {name}")
            return None
        model = self.session.variable(name)
        adapter_for(model)
        data = [d for group in args.data or [] for d in group]
        fingerprint_all({d: self.session.variable(d) for d in data})  # refuse bad data now, not later
        repo = self.session.repo
        head = repo.head(name)
        self.autocommit[name] = data
        if args.keep:
            self.keep[name] = RetentionPolicy.parse(args.keep)
        else:
            self.keep.pop(name, None)
        if repo.is_modified(model, head):
            version = commit_from_notebook(self.session, model, name, data, message="autocommit started",
                                           source="autocommit")
            print(f"autocommit on for {name}; {commit_line(version)}")
        else:
            self.session.recorder.committed(name)
            print(f"autocommit on for {name} (at {head.short_id if head else '—'})")
        return None

    def _listing(self) -> AutocommitList:
        repo = self.session.repo
        names = list(dict.fromkeys([*self.autocommit, *(m for m in repo.models() if m in self.session.namespace)]))
        rows = AutocommitList()
        for name in names:
            head = repo.head(name)
            rows.append((name, "on" if name in self.autocommit else "off", head.short_id if head else "—",
                         " ".join(self.autocommit.get(name, []))))
        return rows

    # -- %mvc_show ----------------------------------------------------------------------------

    @line_magic
    @magic_arguments()
    @argument("ref", nargs="?", default="HEAD", help="the version (default HEAD)")
    @argument("--model", default=None, help="the model whose history the ref is in")
    @argument("--code", action="store_true", help="show the full source of the cells that made it")
    @user_errors
    def mvc_show(self, line: str):
        """Show a version: metadata, metrics, and provenance (notebook, code, data, training set-up,
        libraries). HTML in Jupyter, text in a terminal; returns a ``VersionDetails``."""
        args = parse_line(self.mvc_show, line)
        version = self.session.repo.resolve(args.ref, name=self.session.model_for_ref(args.model, args.ref))
        return VersionDetails(version, code=args.code, rich=is_rich(self.shell))


