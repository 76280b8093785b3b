"""Magics for remotes: %mvc_remote, %mvc_push, %mvc_pull (thin layers over Repo methods)."""

from __future__ import annotations

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments

from ..core.refs import split_remote_and_refs
from ..core.tables import Table
from ..errors import RefusedObjectsError
from .session import MVCSession, parse_line, user_errors


@magics_class
class RemoteMagics(Magics):
    """Share versions through remotes on object storage or folders (any fsspec URL)."""

    def __init__(self, shell, session: MVCSession) -> None:
        super().__init__(shell)
        self.session = session

    @line_magic
    @magic_arguments()
    @argument("action", choices=["add", "list", "remove"], help="add NAME URL | list | remove NAME")
    @argument("args", nargs="*", help="NAME and URL")
    @user_errors
    def mvc_remote(self, line: str):
        """Configure remotes: ``add NAME URL`` (s3://bucket/prefix, file:///path, gs://...), ``list``,
        ``remove NAME``. Credentials come from the environment / fsspec configuration, never the URL."""
        args = parse_line(self.mvc_remote, line)
        repo = self.session.repo
        if args.action == "add":
            if len(args.args) != 2:
                raise UsageError("usage: %mvc_remote add NAME URL")
            url = repo.add_remote(*args.args)
            print(f"remote {args.args[0]} -> {url}")
        elif args.action == "remove":
            if len(args.args) != 1:
                raise UsageError("usage: %mvc_remote remove NAME")
            repo.remove_remote(args.args[0])
            print(f"removed remote {args.args[0]}")
        else:
            if args.args:
                raise UsageError("usage: %mvc_remote list")
            remotes = repo.remotes()
            if not remotes:
                print("no remotes (add one with %mvc_remote add NAME URL)")
                return
            print(Table(["remote", "url"], [[name, url] for name, url in remotes.items()]).to_text())

    @line_magic
    @magic_arguments()
    @argument("remote", nargs="?", default=None, help="remote name or URL (default: origin / the only one)")
    @argument("refs", nargs="*", help="versions to push (tags, id prefixes...; default: all)")
    @argument("--force", action="store_true", help="overwrite tags that the remote has on other versions")
    @user_errors
    def mvc_push(self, line: str):
        """Send versions and their tags to a remote (idempotent; re-run to resume)."""
        args = parse_line(self.mvc_push, line)
        repo = self.session.repo
        remote, refs = split_remote_and_refs([w for w in [args.remote, *args.refs] if w], repo.remotes())
        report = repo.push(remote, refs, force=args.force)
        print(report)

    @line_magic
    @magic_arguments()
    @argument("remote", nargs="?", default=None, help="remote name or URL (default: origin / the only one)")
    @argument("refs", nargs="*", help="remote tags or id prefixes to pull (default: all)")
    @argument("--force", action="store_true", help="move local tags to where the remote has them")
    @user_errors
    def mvc_pull(self, line: str):
        """Fetch versions and tags from a remote; every tensor is verified before it is visible."""
        args = parse_line(self.mvc_pull, line)
        repo = self.session.repo
        remote, refs = split_remote_and_refs([w for w in [args.remote, *args.refs] if w], repo.remotes())
        try:
            report = repo.pull(remote, refs, force=args.force)
        except RefusedObjectsError as exc:  # every refused object on a line of its own, then the error
            print(exc.report)
            raise
        print(report)
