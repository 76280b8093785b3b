"""``mvc rm``, ``mvc tag`` and ``mvc remote``: the store's housekeeping from a terminal.

::

    mvc rm REF [--model M] [--force]                 remove a version (protected tags: --force)
    mvc rm --remote NAME REF [--force]               remove a version on a remote (its tags: --force)
    mvc tag REF NAME [--model M] [--force] [--protect] mvc tag --delete NAME [--model M] [--force]
    mvc remote [list]                                mvc remote add NAME URL
    mvc remote remove NAME                           mvc remote verify [NAME]
    mvc remote checkpoint [NAME]                     sign the remote's log as a checkpoint (release key)
"""

from __future__ import annotations

import argparse

from ..api.repo import Repo
from ..errors import MVCError
from ..operations.remote_check import sign_checkpoint, verify_remote
from ..operations.remote_removal import remove_remote_versions

COMMANDS = ("rm", "tag", "remote")


def add_parsers(sub) -> None:
    """Add the subcommands to ``sub`` (the ``mvc`` parser's subparsers)."""
    p = sub.add_parser("rm", help="remove a version (its tensors stay while other versions use them)")
    p.add_argument("ref", help="the version")
    p.add_argument("--model", default=None, help="the model whose history the ref is in")
    p.add_argument("--force", action="store_true", help="also when a protected tag is on it (with --remote: "
                   "delete its unprotected tags there; a protected one always blocks)")
    p.add_argument("--remote", default=None, metavar="NAME", help="remove the version on this remote instead")

    p = sub.add_parser("tag", help="put a tag on a version, or --delete one")
    p.add_argument("words", nargs="+", metavar="REF NAME | NAME", help="REF NAME to tag; NAME with --delete")
    p.add_argument("--model", default=None, help="the model whose history the ref is in")
    p.add_argument("--force", action="store_true", help="move an existing tag / delete a protected one")
    p.add_argument("--protect", action="store_true", help="protect the tag (moving or deleting needs --force)")
    p.add_argument("--delete", action="store_true", help="remove the tag NAME")

    p = sub.add_parser("remote", help="list, add, remove or verify remotes, or sign a checkpoint")
    p.add_argument("action", nargs="?", default="list", choices=("list", "add", "remove", "verify", "checkpoint"))
    p.add_argument("args", nargs="*", metavar="NAME [URL]")


def run(repo: Repo, args: argparse.Namespace) -> int:
    """Run one of :data:`COMMANDS`; return the exit code."""
    if args.command == "rm" and args.remote is not None:
        ids = remove_remote_versions(repo.store, args.remote, [args.ref], force=args.force)
        print(f"removed {', '.join(i[:12] for i in ids)} on remote {args.remote}; pulls and clones no longer "
              "bring it (its file stays there while other versions read tensors from it)")
    elif args.command == "rm":
        version = repo.remove(args.ref, name=args.model, force=args.force)
        print(f"removed {version.short_id} ({version.name}); mvc gc reclaims its space")
    elif args.command == "tag":
        return _tag(repo, args)
    else:
        return _remote(repo, args.action, args.args)
    return 0


def _tag(repo: Repo, args: argparse.Namespace) -> int:
    if args.delete:
        if len(args.words) != 1:
            raise MVCError("mvc tag --delete takes one tag name")
        repo.untag(args.words[0], name=args.model, force=args.force)
        print(f"deleted tag {args.words[0]}")
        return 0
    if len(args.words) != 2:
        raise MVCError("mvc tag takes REF NAME (or --delete NAME)")
    version = repo.tag(args.words[0], args.words[1], name=args.model, force=args.force,
                       protect=True if args.protect else None)
    print(f"tagged {version.short_id} ({version.name}) {args.words[1]}")
    return 0


def _remote(repo: Repo, action: str, words: list[str]) -> int:
    wanted = {"list": (0, 0), "add": (2, 2), "remove": (1, 1), "verify": (0, 1), "checkpoint": (0, 1)}[action]
    if not wanted[0] <= len(words) <= wanted[1]:
        usage = {"list": "", "add": " NAME URL", "remove": " NAME"}.get(action, " [NAME]")
        raise MVCError(f"usage: mvc remote {action}{usage}")
    if action == "add":
        print(f"added remote {words[0]} -> {repo.add_remote(words[0], words[1])}")
    elif action == "remove":
        repo.remove_remote(words[0])
        print(f"removed remote {words[0]} (nothing on it was touched)")
    elif action == "verify":
        problems = verify_remote(repo.store, words[0] if words else None)
        print("\n".join(problems) if problems else "remote ok: the log's hash chain holds, every tag names a "
                                                    "version it holds, protected tags are signed by allowed signers")
        return 1 if problems else 0
    elif action == "checkpoint":
        print(f"signed checkpoint log/{sign_checkpoint(repo.store, words[0] if words else None)}")
    else:
        for name, url in sorted(repo.remotes().items()):
            print(f"{name}\t{url}")
    return 0
