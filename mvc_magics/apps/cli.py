"""The ``mvc`` command: the same store from a terminal or a CI job.

::

    mvc init                        mvc du                     (an empty store; disk usage per model)
    mvc log [MODEL] [-n N]          mvc show REF               mvc compare [REF ...] [--weights K=W,...]
    mvc verify                      mvc gc [--keep RULE...] [--dry-run] [--repack]   mvc export REF PATH
    mvc push [REMOTE] [REF ...]     mvc pull [REMOTE] [REF ...]  mvc clone URL [PATH]
    mvc publish REF mlflow NAME [--alias A]        mvc publish REF dvc PATH [--artifact NAME]
    mvc rm [--remote NAME] REF  mvc tag REF NAME | --delete NAME
    mvc remote [list|add NAME URL|remove NAME|verify [NAME]|checkpoint [NAME]]

``--store PATH`` (before or after the subcommand) picks the store (default: ``$MVC_DIR``, else
``.mvc`` in the current folder).
Errors are one line on stderr with exit code 1. ``python -m mvc_magics.cli`` works too.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .._version import __version__
from ..api.repo import Repo
from ..core.git_provenance import describe
from ..core.publication import TARGETS
from ..core.refs import split_remote_and_refs
from ..core.tables import Table, format_bytes, format_number
from ..errors import CompareError, MVCError, RefusedObjectsError, missing_package_message
from ..operations.export import FORMATS
from . import cli_manage


class _Parser(argparse.ArgumentParser):
    """argparse, but bad input is one line on stderr and exit code 1."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(1, f"mvc: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mvc", description="Model version control: the store of mvc_magics from a terminal.")
    parser.add_argument("--version", action="version", version=f"mvc_magics {__version__}")
    parser.add_argument("--store", default=None, metavar="PATH",
                        help="the store folder (default: $MVC_DIR, else .mvc in the current folder)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("log", help="versions newest first, with tags (protected: tag*) and metrics")
    p.add_argument("model", nargs="?", default=None, help="the model (default: all)")
    p.add_argument("-n", type=int, default=20, help="how many versions (0: all)")

    p = sub.add_parser("show", help="one version: id, parents, metrics, params, tags, size")
    p.add_argument("ref", help="id prefix, tag, latest, best:METRIC...")
    p.add_argument("--model", default=None, help="the model whose history the ref is in")

    p = sub.add_parser("compare", help="rank versions by weighted metrics (Repo.compare), as text")
    p.add_argument("refs", nargs="*", help="versions (default: the model's most recent 20)")
    p.add_argument("--model", default=None, help="the model whose history the refs are in")
    p.add_argument("--weights", default=None, metavar="K=W,...", help="metric weights, e.g. val_acc=2,latency=0.5")
    p.add_argument("--baseline", default=None, metavar="REF", help="what D is measured against (default: oldest)")

    sub.add_parser("verify", help="re-hash every tensor of every version; exit 1 when damaged")
    sub.add_parser("init", help="create an empty store at --store (default: $MVC_DIR, else .mvc)")
    sub.add_parser("du", help="per model: versions, logical size, bytes stored, what dedup, coding and deltas saved")
    p = sub.add_parser("gc", help="reclaim the space of tensors no remaining version uses")
    p.add_argument("--keep", action="append", default=None, metavar="RULE",
                   help="retention rule: best:METRIC:N[:min|max], last:N or tagged (repeatable)")
    p.add_argument("--model", default=None, help="apply the policy to this model only")
    p.add_argument("--dry-run", action="store_true", help="list what --keep would remove, remove nothing")
    p.add_argument("--repack", action="store_true", help="re-code stored versions as deltas toward keyframes")

    p = sub.add_parser("export", help="write a version for serving (.keras, SavedModel, .safetensors, .skops...)")
    p.add_argument("ref", help="the version")
    p.add_argument("path", help="destination")
    p.add_argument("--format", default=None, choices=FORMATS, help="default: from the framework and PATH's suffix")
    p.add_argument("--model", default=None, help="the model whose history the ref is in")

    p = sub.add_parser("publish", help="publish a version to an MLflow registry or as a DVC model artifact")
    p.add_argument("ref", help="the version")
    p.add_argument("target", choices=TARGETS, help="mlflow (tracking URI: $MLFLOW_TRACKING_URI) or dvc")
    p.add_argument("destination", help="mlflow: the registered model NAME; dvc: the artifact folder PATH")
    p.add_argument("--alias", default=None, help="mlflow: the alias to point at the version")
    p.add_argument("--artifact", default=None, metavar="NAME", help="dvc: the artifact name (default: the model's)")
    p.add_argument("--model", default=None, help="the model whose history the ref is in")

    for name, text in (("push", "send versions and tags to a remote"), ("pull", "fetch versions and tags")):
        p = sub.add_parser(name, help=text)
        p.add_argument("remote", nargs="?", default=None, help="remote name or URL (default: origin)")
        p.add_argument("refs", nargs="*", help="versions (default: all)")
        p.add_argument("--force", action="store_true", help="overwrite conflicting tags")

    p = sub.add_parser("clone", help="a new store with everything from a remote URL")
    p.add_argument("url", help="fsspec URL: s3://bucket/prefix, file:///path, gs://...")
    p.add_argument("path", nargs="?", default=None, help="the new store folder (default: --store or .mvc)")
    cli_manage.add_parsers(sub)
    # ``mvc log --store PATH`` as well as ``mvc --store PATH log``: every subcommand takes it too
    # (SUPPRESS: given before the subcommand, it is not reset to None by the subcommand's default).
    for command in sub.choices.values():
        command.add_argument("--store", default=argparse.SUPPRESS, metavar="PATH", help="the store folder")
    return parser


def _store_path(args) -> str:
    if args.store:
        return args.store
    return os.environ.get("MVC_DIR") or ".mvc"


def _show(repo, args) -> str:
    v = repo.resolve(args.ref, name=args.model)
    rows = [["id", v.id], ["model", v.name], ["message", v.message],
            ["tags", ", ".join(t + ("*" if t in v.protected_tags else "") for t in v.tags)],
            ["parents", ", ".join(p[:12] for p in v.parents)], ["created", v.created.isoformat()],
            ["author", v.author], ["framework", v.framework],
            ["size", f"{format_bytes(v.nbytes)} in {v.n_tensors} tensors"]]
    rows += [[f"metric {k}", format_number(val)] for k, val in sorted(v.metrics.items())]
    rows += [[f"param {k}", str(val)] for k, val in sorted(v.params.items())]
    git = describe(v.provenance.get("git"))
    if git:  # the code it was made from (the diff: %mvc_show REF --code, or version.provenance)
        rows.append(["git", git])
    return Table(["field", "value"], rows, title=f"version {v.short_id}").to_text()


def _weights(text: str | None) -> dict[str, float] | None:
    if text is None:
        return None
    weights = {}
    for piece in filter(None, text.split(",")):
        key, sep, value = piece.partition("=")
        try:
            weights[key.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not key.strip():
            raise CompareError(f"weight {piece!r} must look like METRIC=NUMBER")
    return weights


def _compare(repo, args) -> str:
    comparison = repo.compare(args.refs or None, name=args.model, weights=_weights(args.weights),
                              baseline=args.baseline)
    return str(comparison)


def _publish(repo, args) -> str:
    if args.target == "mlflow":
        options = {"registered_model_name": args.destination, "alias": args.alias}
    else:
        options = {"path": args.destination, "artifact": args.artifact}
    if (args.alias and args.target == "dvc") or (args.artifact and args.target == "mlflow"):
        raise MVCError("--alias is for mlflow, --artifact for dvc")
    return str(repo.publish(args.ref, args.target, name=args.model, **options))


def run(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv``; return the exit code."""
    args = build_parser().parse_args(argv)
    if args.command == "clone":
        try:
            repo = Repo.clone(args.url, args.path or _store_path(args))
        except RefusedObjectsError as exc:  # the clone keeps what arrived: say what was refused, one a line
            print(exc.report)
            raise
        print(f"cloned {args.url} into {repo.path} ({repo.index.count()} versions)")
        repo.close()
        return 0
    if args.command == "init":
        with Repo(_store_path(args)) as repo:
            print(f"mvc store at {repo.path} ({repo.index.count()} versions)")
        return 0
    with Repo(_store_path(args), create=False) as repo:
        if args.command == "du":
            print(repo.du())
        elif args.command == "log":
            if args.n < 0:
                raise MVCError("-n must be 0 (all) or a positive count")
            log = repo.log(args.model, limit=args.n or None)
            if args.model and not log and args.model not in repo.models():
                known = ", ".join(repo.models()) or "none yet"
                raise MVCError(f"no model {args.model!r} in this store; models: {known}")
            print(log)
        elif args.command == "show":
            print(_show(repo, args))
        elif args.command == "compare":
            print(_compare(repo, args))
        elif args.command == "verify":
            report = repo.verify()
            print(report)
            return 0 if report.ok else 1
        elif args.command == "gc":
            result = repo.gc(keep=args.keep, name=args.model, dry_run=args.dry_run, repack=args.repack)
            print(*(result if isinstance(result, tuple) else (result,)), sep="\n")
        elif args.command == "export":
            path = repo.export(args.ref, args.path, format=args.format, name=args.model)
            print(f"exported {args.ref}{f' as {args.format}' if args.format else ''} to {path}")
        elif args.command == "publish":
            print(_publish(repo, args))
        elif args.command in cli_manage.COMMANDS:
            return cli_manage.run(repo, args)
        elif args.command in ("push", "pull"):
            method = repo.push if args.command == "push" else repo.pull
            remote, refs = split_remote_and_refs([w for w in [args.remote, *args.refs] if w], repo.remotes())
            try:
                print(method(remote, refs, force=args.force))
            except RefusedObjectsError as exc:
                print(exc.report)
                raise
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point: one-line errors and exit code 1 on bad input or a failed operation."""
    try:
        code = run(argv)
        sys.stdout.flush()  # here, not at exit: a closed pipe is then caught below
    except BrokenPipeError:
        # `mvc log | head`: the reader left. Quiet, like git: no traceback, exit status of SIGPIPE.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 141
    except MVCError as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"mvc: error: {message}", file=sys.stderr)
        code = 1
    except ModuleNotFoundError as exc:  # an optional package (a framework, fsspec) not installed
        message = missing_package_message(exc)
        if message is None:
            raise
        print(f"mvc: error: {message}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        print("mvc: interrupted; finished steps are kept, re-run to complete", file=sys.stderr)
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
