"""%mvc_audit: the store's hash-chained record of every operation, newest first."""

from __future__ import annotations

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments

from .session import MVCSession, parse_line, user_errors


@magics_class
class AuditMagics(Magics):
    """Who did what to the store, and when: commits, checkouts, tag moves, recoveries..."""

    def __init__(self, shell, session: MVCSession) -> None:
        super().__init__(shell)
        self.session = session

    @line_magic
    @magic_arguments()
    @argument("-n", type=int, default=20, help="how many entries (newest first; 0: all)")
    @user_errors
    def mvc_audit(self, line: str):
        """Show the audit log, newest first (``repo.verify()`` checks its hash chain)."""
        args = parse_line(self.mvc_audit, line)
        if args.n < 0:
            raise UsageError("-n must be 0 (all) or a positive count")
        return self.session.repo.audit_log(limit=args.n or None)
