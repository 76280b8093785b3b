"""The core magics: %mvc_init, %mvc_commit, %mvc_checkout, %mvc_log, %mvc_tag, %mvc_status."""

from __future__ import annotations

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments
from traitlets import Enum, Unicode

from ..api.optimizer import commit_optimizer, restore_optimizer
from ..core.metadata import parse_metric_value, parse_param_value
from ..core.tables import format_bytes
from .capture import commit_from_notebook
from .output import OUTPUT_CHOICES, show_graph
from .session import MVCSession, parse_line, user_errors


def parse_pairs(groups: list[list[str]] | None, what: str) -> list[tuple[str, str]]:
    """``K=V`` items from repeated ``--metric``/``--param`` flags (each may take several)."""
    pairs = []
    for item in (entry for group in groups or [] for entry in group):
        for piece in item.split(","):
            if not piece:
                continue
            key, sep, value = piece.partition("=")
            if not sep or not key:
                raise UsageError(f"{what} {piece!r} must look like KEY=VALUE")
            pairs.append((key.strip(), value.strip()))
    return pairs


@magics_class
class MVCMagics(Magics):
    """Model version control: commit, check out, log, tag and status of notebook models.

    Options (``%config MVCMagics.<option> = ...``): ``store`` (the store folder),
    ``default_model`` (the variable meant when a magic names none) and ``output`` (``auto``,
    ``widget``, ``html`` or ``text``: how results are shown; ``auto`` is rich in Jupyter, text in a
    terminal).
    """

    store = Unicode("", help="Store folder; empty: .mvc beside the notebook (or $MVC_DIR)").tag(config=True)
    default_model = Unicode("", help="Model variable used when a magic names none").tag(config=True)
    output = Enum(OUTPUT_CHOICES, default_value="auto",
                  help="How results are shown: auto (widgets/HTML in Jupyter, text in a terminal), "
                       "widget, html or text").tag(config=True)

    def __init__(self, shell, session: MVCSession) -> None:
        super().__init__(shell)
        self.session = session
        self.observe(self._on_store_change, names="store")

    def _on_store_change(self, change) -> None:
        self.session.init(change["new"] or None)

    # -- %mvc_init --------------------------------------------------------------------------

    @line_magic
    @magic_arguments()
    @argument("path", nargs="?", default=None, help="store folder (default: .mvc beside the notebook)")
    @user_errors
    def mvc_init(self, line: str):
        """Use (and create) the version store at PATH for this notebook."""
        args = parse_line(self.mvc_init, line)
        repo = self.session.init(args.path)
        print(f"mvc store at {repo.path} ({repo.index.count()} versions)")

    # -- %mvc_commit ------------------------------------------------------------------------

    @line_magic
    @magic_arguments()
    @argument("model", nargs="?", default=None, help="the model variable to commit")
    @argument("-m", "--message", default=None, help="what changed in this version")
    @argument("--metric", nargs="+", action="append", metavar="K=V", help="metrics, e.g. --metric acc=0.9")
    @argument("--param", nargs="+", action="append", metavar="K=V", help="params, e.g. --param lr=0.01")
    @argument("--tag", nargs="+", action="append", metavar="TAG", help="tags to put on the version")
    @argument("--data", nargs="+", action="append", metavar="VAR",
              help="data variables to fingerprint in the provenance (hash, shape, dtype)")
    @argument("--optimizer", default=None, metavar="VAR",
              help="keep this optimizer's state (PyTorch, Keras) with the version; checkout --optimizer restores it")
    @argument("--model", dest="history", default=None, metavar="NAME",
              help="commit into the history of model NAME (default: the variable's own name)")
    @user_errors
    def mvc_commit(self, line: str):
        """Commit the model variable MODEL as a new version (fit history metrics are captured).

        The provenance records the notebook, the cells run since the last commit of MODEL and,
        with ``--data x_train y_train``, fingerprints of the training data (``%mvc_show --code``).

        Returns the Version, so ``v = %mvc_commit model`` works.
        """
        args = parse_line(self.mvc_commit, line)
        variable = args.model or self.session.default_model()
        model = self.session.variable(variable)
        name = args.history or variable
        metrics = {k: parse_metric_value(k, v) for k, v in parse_pairs(args.metric, "metric")}
        params = {k: parse_param_value(v) for k, v in parse_pairs(args.param, "param")}
        tags = [t for group in args.tag or [] for t in group]
        data = [d for group in args.data or [] for d in group]
        version = commit_from_notebook(
            self.session, model, name, data, message=args.message, metrics=metrics or None, params=params,
            tags=tags,
        )
        print(commit_line(version))
        if args.optimizer:
            kept = commit_optimizer(self.session.repo, self.session.variable(args.optimizer), version)
            print(f"optimizer {args.optimizer} kept with {version.short_id} ({kept.short_id})")
        return version

    # -- %mvc_checkout ----------------------------------------------------------------------

    @line_magic
    @magic_arguments()
    @argument("ref", help="id prefix, tag, latest, HEAD~N, best:METRIC[:min|max]")
    @argument("model", nargs="?", default=None, help="the model variable to load into (in place)")
    @argument("--as", dest="as_var", default=None, metavar="VAR", help="build a new model into VAR")
    @argument("--model", dest="history", default=None, metavar="NAME",
              help="the model history REF is in (default: MODEL's own, or the only model)")
    @argument("--unsafe", action="store_true",
              help="allow rebuilding models whose classes are your code (defined in the notebook or imported)")
    @argument("--require-signature", action="store_true",
              help="refuse a version without a valid signature (MVC_SIGNING_KEY / MVC_SIGNING_KEY_FILE)")
    @argument("--optimizer", default=None, metavar="VAR",
              help="also restore this optimizer's state as committed with the version (commit --optimizer)")
    @user_errors
    def mvc_checkout(self, line: str):
        """Load a version into the model variable in place, or build it into a new variable (--as).

        In place, every shape is checked before the first assignment: on any error the variable is
        exactly as it was. Every tensor is re-hashed while loading; damaged data is refused.
        """
        args = parse_line(self.mvc_checkout, line)
        repo = self.session.repo
        signed = {"require_signature": True} if args.require_signature else {}
        history = args.history
        if history is None and args.model and args.model in repo.models():
            history = args.model
        version = repo.resolve(args.ref, name=self.session.model_for_ref(history, args.ref))
        if args.model and not args.as_var and args.model not in self.session.namespace:
            # A typo must not build a stray model: in place means into an existing variable.
            raise UsageError(f"no variable named {args.model!r} in the notebook to load into; to build the "
                             f"version into a new variable: %mvc_checkout {args.ref} --as {args.model}")
        if args.as_var:
            if not args.as_var.isidentifier():
                raise UsageError(f"{args.as_var!r} is not a variable name")
            # A copy in a new variable: the model's own variable (and its HEAD) stay where they are.
            self.session.namespace[args.as_var] = repo.checkout(version.id, name=version.name, **signed,
                                                                move_head=False, **self.session.trust(args.unsafe))
            print(f"built {version.short_id} ({version.name}) into {args.as_var}")
            return
        target = args.model or version.name
        live = self.session.namespace.get(target)
        if live is None:
            self.session.namespace[target] = repo.checkout(version.id, None, name=target, **signed,
                                                           **self.session.trust(args.unsafe))
            print(f"built {version.short_id} into new variable {target}")
        else:
            # Into another variable than the history's own (--model): loaded, but no new model is tracked.
            own = target == version.name or target in repo.models()
            result = repo.checkout(version.id, live, name=target if own else version.name, **signed,
                                   move_head=own)
            if result is not live:  # a JAX pytree is immutable: the variable now names the new one
                self.session.namespace[target] = result
            print(f"checked out {version.summary()} into {target}")
        # HEAD's move, made by the store's background thread, is done (or its error said) when the cell ends.
        repo.store.background.settle()
        repo.store.background.raise_error()
        if args.optimizer:
            restore_optimizer(repo, self.session.variable(args.optimizer), version)
            print(f"restored optimizer {args.optimizer} as committed with {version.short_id}")
        self.session.recorder.committed(target)  # the next version's provenance starts here

    # -- %mvc_log ---------------------------------------------------------------------------

    @line_magic
    @magic_arguments()
    @argument("model", nargs="?", default=None, help="the model (default: all models)")
    @argument("-n", type=int, default=20, help="how many versions (newest first; 0: all)")
    @argument("--graph", action="store_true",
              help="draw the version graph (merges, tags, HEAD): a figure in Jupyter, text in a terminal")
    @user_errors
    def mvc_log(self, line: str):
        """Show the versions of a model, newest first, with tags, metrics and HEAD."""
        args = parse_line(self.mvc_log, line)
        if args.n < 0:
            raise UsageError("-n must be 0 (all) or a positive count")
        name = args.model or self.session.configured_model() or None
        log = self.session.repo.log(name, limit=args.n or None)
        if name and not log:
            known = self.session.repo.models()
            if name not in known:  # a typo must not look like an empty history
                raise UsageError(f"no model {name!r} in this store; models: {', '.join(known[:10]) or 'none yet'}")
            head = self.session.repo.head(name)
            if head is not None and head.name != name:  # an API checkout of another model's version moved it
                print(f"{name} has no versions of its own yet: it is at {head.short_id}, a version of "
                      f"{head.name!r} (HEAD, HEAD~N and its next commit start from there)")
        if args.graph:
            show_graph(self.shell, log)
            return None
        return log

    # -- %mvc_tag ---------------------------------------------------------------------------

    @line_magic
    @magic_arguments()
    @argument("names", nargs="+", metavar="REF TAG", help="the version and the tag (only TAG with --delete)")
    @argument("--model", default=None, help="the model whose history the ref is in")
    @argument("--delete", action="store_true", help="remove the tag")
    @argument("--force", action="store_true", help="move a tag that is on another version")
    @argument("--protect", action="store_true", help="protect the tag: moving or deleting it needs --force")
    @user_errors
    def mvc_tag(self, line: str):
        """Put TAG on version REF (``--force`` to move it), or remove it with ``--delete``."""
        args = parse_line(self.mvc_tag, line)
        repo = self.session.repo
        if args.delete:
            if len(args.names) not in (1, 2):
                raise UsageError("usage: %mvc_tag [REF] TAG --delete")
            repo.untag(args.names[-1], name=args.model or self.session.configured_model() or None, force=args.force)
            print(f"deleted tag {args.names[-1]}")
            return
        if len(args.names) != 2:
            raise UsageError("usage: %mvc_tag REF TAG [--force] [--protect]")
        ref, tag = args.names
        version = repo.tag(ref, tag, name=self.session.model_for_ref(args.model, ref), force=args.force,
                           protect=True if args.protect else None)
        print(f"tagged {version.short_id} ({version.name}) as {tag}")

    # -- %mvc_status ------------------------------------------------------------------------

    @line_magic
    @user_errors
    def mvc_status(self, line: str):
        """Each tracked model variable: the version it is at and whether its weights changed since.

        Usage: ``%mvc_status``. A model is tracked once it has been committed or checked out; a
        variable that is no longer in the notebook is listed as such.
        """
        if line.split("#", 1)[0].strip():  # a trailing "# comment" is allowed, as on every magic
            raise UsageError("%mvc_status takes no arguments")
        report = self.session.repo.status(self.session.namespace)
        report.pending = report.pending or self.session.pending  # what the store waited for first
        return report


def commit_line(version) -> str:
    """What %mvc_commit prints: id, message, tensors written vs reused, bytes written; for content
    already stored, what was attached and (one line each) what was not (and, for content stored as
    another model's version, that it joined this model's history)."""
    stats = version.stats
    message = f" {short_message(version.message)!r}" if version.message else ""
    if stats is not None and not stats.new_version:
        notes = "".join(f"\n  note: {note}" for note in stats.notes)
        return f"unchanged: {version.short_id}{message} already stored{notes}"
    written = stats.tensors_written if stats else 0
    reused = stats.tensors_reused if stats else 0
    nbytes = stats.bytes_written if stats else 0
    return (f"committed {version.short_id} {version.name}{message}: {written} tensors written, "
            f"{reused} reused, {format_bytes(nbytes)}")


# A commit echoes the message on one line; the whole message stays in the version (%mvc_show).
MESSAGE_ECHO_LIMIT = 72


def short_message(message: str) -> str:
    """The first line of ``message``, cut to :data:`MESSAGE_ECHO_LIMIT` characters with a count of the rest."""
    first = message.splitlines()[0] if message else ""
    if len(first) <= MESSAGE_ECHO_LIMIT and first == message:
        return message
    return f"{first[:MESSAGE_ECHO_LIMIT]}… ({len(message)} characters)"
