"""Magics for the end of a version's life: %mvc_export, %mvc_rm, %mvc_gc, and %mvc_du (what it all takes)."""

from __future__ import annotations

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments

from ..operations.export import FORMATS
from ..operations.tfserving import ServingLayout
from .session import MVCSession, parse_line, user_errors


@magics_class
class LifecycleMagics(Magics):
    """Export versions for serving, remove versions, reclaim space."""

    def __init__(self, shell, session: MVCSession) -> None:
        super().__init__(shell)
        self.session = session

    @line_magic
    @magic_arguments()
    @argument("ref", help="the version (tag such as production, id prefix, best:METRIC...)")
    @argument("path", help="destination: model.keras, a SavedModel folder, model.weights.h5, net.safetensors, "
                           "net.pt, clf.skops, booster.txt")
    @argument("--format", default=None, choices=FORMATS,
              help="default: from the framework and PATH's suffix. keras, savedmodel, weights-h5 (Keras); savedmodel "
                   "(tf.Module); safetensors, torchscript (PyTorch); skops (scikit-learn); safetensors (JAX); "
                   "lightgbm; tfserving: the next PATH/<n> folder TF Serving serves")
    @argument("--model", default=None, help="the model whose history the ref is in")
    @argument("--from-live", dest="live", nargs="?", const="", default=None, metavar="VAR",
              help="write the live model VAR (default: the model's own variable), which must hold the version")
    @argument("--unsafe", action="store_true",
              help="allow rebuilding a model whose class is your code (defined in the notebook or imported)")
    @user_errors
    def mvc_export(self, line: str):
        """Write a version for serving in its framework's format, chosen from PATH's suffix by default.

        Keras: ``.keras``, a SavedModel folder, ``.weights.h5``; ``tf.Module``: a SavedModel with its
        ``tf.function`` signatures; PyTorch: ``.safetensors``, TorchScript ``.pt``; scikit-learn:
        ``.skops``; JAX: ``.safetensors``; LightGBM: its text model ``.txt``; ``--format tfserving``.
        A model whose class is your code is rebuilt with ``--unsafe``, or exported as it is with
        ``--from-live``.

        The model is rebuilt from the stored version, or with ``--from-live`` the notebook's variable
        is written as it is (it must hold exactly that version: check it out first).
        """
        args = parse_line(self.mvc_export, line)
        repo = self.session.repo
        version = repo.resolve(args.ref, name=self.session.model_for_ref(args.model, args.ref))
        live = self.session.variable(args.live or version.name) if args.live is not None else None
        if args.format == "tfserving":
            held = ServingLayout(args.path).folder_of(version.id)
            if held is not None:  # TF Serving's layout holds each version once
                print(f"{version.short_id} ({version.name}) is already TF Serving version {held.name} at {held}")
                return
        path = repo.export(version.id, args.path, format=args.format, name=version.name, model=live,
                           **self.session.trust(args.unsafe))
        how = f" as {args.format}" if args.format else ""
        print(f"exported {version.short_id} ({version.name}, {args.ref}){how} to {path}")

    @line_magic
    @magic_arguments()
    @argument("ref", help="the version to remove")
    @argument("--model", default=None, help="the model whose history the ref is in")
    @argument("--force", action="store_true", help="remove a version that carries a protected tag")
    @user_errors
    def mvc_rm(self, line: str):
        """Remove a version (its tags go; a HEAD on it moves to its parent). %mvc_gc reclaims the space."""
        args = parse_line(self.mvc_rm, line)
        version = self.session.repo.remove(args.ref, name=self.session.model_for_ref(args.model, args.ref),
                                           force=args.force)
        print(f"removed {version.short_id} ({version.name}); run %mvc_gc to reclaim its space")

    @line_magic
    @magic_arguments()
    @argument("--keep", action="append", default=None, metavar="RULE",
              help="retention rule: best:METRIC:N[:min|max], last:N or tagged (repeatable); versions no rule "
                   "keeps are removed (never tagged/protected ones or HEADs)")
    @argument("--model", default=None, help="apply the policy to this model only (default: every model)")
    @argument("--dry-run", action="store_true", help="list what --keep would remove, remove nothing")
    @argument("--repack", action="store_true", help="re-code stored versions as deltas toward keyframes")
    @user_errors
    def mvc_gc(self, line: str):
        """Reclaim the space of tensors no remaining version uses; prints the bytes freed.

        With --keep, first removes the versions a retention policy does not keep, e.g.
        ``%mvc_gc --keep best:val_loss:5 --keep last:3 --keep tagged --dry-run``.
        """
        args = parse_line(self.mvc_gc, line)
        result = self.session.repo.gc(keep=args.keep, name=args.model, dry_run=args.dry_run, repack=args.repack)
        for part in result if isinstance(result, tuple) else (result,):
            print(part)

    @line_magic
    @user_errors
    def mvc_du(self, line: str):
        """Disk usage per model: versions, logical size, bytes stored, and what deduplication
        (a tensor stored once for every version holding it), coding (byte planes + zstd) and
        deltas saved. Usage: ``%mvc_du``; returns the report (``repo.du()``)."""
        if line.split("#", 1)[0].strip():
            raise UsageError("%mvc_du takes no arguments")
        return self.session.repo.du()
