"""%mvc_merge: weight averages, greedy soups, ensembles and merges over task vectors of stored versions."""

from __future__ import annotations

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments

from ..adapters import adapter_for
from ..core.merge_plan import METHODS
from ..core.provenance import build_provenance
from ..core.tables import format_bytes, format_number
from ..errors import UnsupportedModelError
from .session import MVCSession, parse_line, user_errors


def parse_weights(text: str | None) -> list[float] | None:
    """``--weights 2,1,1`` -> [2.0, 1.0, 1.0] (the API checks count and signs)."""
    if text is None:
        return None
    try:
        return [float(piece) for piece in text.split(",") if piece.strip()]
    except ValueError:
        raise UsageError(f"--weights must be numbers separated by commas, not {text!r}") from None


@magics_class
class MergeMagics(Magics):
    """Merging versions: ``%mvc_merge`` (average, greedy soup, ensemble, vote)."""

    def __init__(self, shell, session: MVCSession) -> None:
        super().__init__(shell)
        self.session = session

    def _callable(self, name: str | None, what: str):
        if name is None:
            return None
        value = self.session.variable(name)
        if not callable(value):
            raise UsageError(f"{what} {name!r} is not callable (it must take a model and return a number)")
        return value


    def _template(self, name: str | None):
        """The live model variable of the refs' model: used to evaluate in when no structure is stored."""
        value = self.session.namespace.get(name) if name else None
        try:
            adapter_for(value)
        except UnsupportedModelError:
            return None
        return value

    @line_magic
    @magic_arguments()
    @argument("refs", nargs="*", metavar="REF", help="two or more versions (id prefix, tag, best:METRIC...)")
    @argument("--model", default=None, help="the model whose history the refs are in (and the result's model)")
    @argument("--weights", default=None, metavar="W1,W2,...", help="one weight per ref (normalized; default equal)")
    @argument("--method", default="average", choices=METHODS, metavar="METHOD",
              help="average | greedy | ensemble | vote | task_arithmetic | ties | dare_linear | dare_ties | "
                   "slerp | model_stock")
    @argument("--base", default=None, metavar="REF",
              help="task-vector methods: the version the inputs were fine-tuned from (default: their merge base)")
    @argument("--density", type=float, default=None, metavar="D",
              help="ties: fraction of each task vector kept (0.2); dare_*: probability an element is kept (0.5)")
    @argument("--scale", type=float, default=None, metavar="L", help="task-vector methods: merged task vector x L (1)")
    @argument("--t", type=float, default=None, metavar="T", help="slerp: 0 = first version, 1 = second (0.5)")
    @argument("--seed", type=int, default=None, metavar="S", help="dare_*: seed of the random drops (0)")
    @argument("--eval", dest="eval_fn", default=None, metavar="FUNC",
              help="a callable in the notebook: FUNC(model) -> score, higher is better")
    @argument("--metric", default=None, metavar="NAME[:min|max]",
              help="greedy: rank the ingredients by this stored metric instead of FUNC")
    @argument("--into", default=None, metavar="VAR",
              help="load the result into VAR in place, or build it into a new variable VAR")
    @argument("--name", default=None, help="commit the result as this model (default: --model or the first ref's)")
    @argument("-m", "--message", default=None, help="commit message (default: what the merge was)")
    @argument("--tag", nargs="+", action="append", metavar="TAG", help="tags to put on the merged version")
    @argument("--widget", action="store_true", help="open the merge panel (weights, preview, commit)")
    @argument("--unsafe", action="store_true",
              help="allow rebuilding models whose classes are your code (defined in the notebook or imported)")
    @user_errors
    def mvc_merge(self, line: str):
        """Merge versions into a new version whose parents are all of them.

        ``--method average`` (default): weighted mean of the weights (a uniform soup without
        ``--weights``). ``greedy``: add ingredients best-first while ``--eval FUNC`` does not drop.
        ``ensemble`` / ``vote``: a Keras model averaging the members' outputs / taking the
        majority class. Over task vectors (each ref minus ``--base``, by default the refs' merge
        base): ``task_arithmetic``, ``ties``, ``dare_linear``, ``dare_ties``, ``model_stock``; and
        ``slerp`` of two refs. Returns the merged Version (``v = %mvc_merge a b``).
        """
        args = parse_line(self.mvc_merge, line)
        repo = self.session.repo
        name = self.session.model_for_ref(args.model, *args.refs[:1])
        eval_fn = self._callable(args.eval_fn, "--eval")
        weights = parse_weights(args.weights)
        tags = [t for group in args.tag or [] for t in group]
        into, build_into = None, None
        if args.into:
            if not args.into.isidentifier():
                raise UsageError(f"{args.into!r} is not a variable name")
            existing = self.session.namespace.get(args.into)
            if existing is not None and args.method not in ("ensemble", "vote"):
                try:
                    adapter_for(existing)
                except UnsupportedModelError:
                    raise UsageError(f"{args.into!r} is not a model; choose another --into variable") from None
                into = existing
            else:
                build_into = args.into
        params = {key: getattr(args, key) for key in ("density", "scale", "t", "seed")
                  if getattr(args, key) is not None}
        if args.widget:
            from ..widgets.merge_panel import MergePanel

            if build_into:
                raise UsageError("--widget with --into needs an existing model variable to load the result into")
            return MergePanel(repo, args.refs, name=name, namespace=self.session.namespace, weights=weights,
                              method=args.method, eval_name=args.eval_fn, result_name=args.name, into=into,
                              base=args.base, params=params)
        version = repo.merge(args.refs, weights=weights, method=args.method, eval_fn=eval_fn, name=name, base=args.base,
                             message=args.message, into=into, metric=args.metric, result_name=args.name,
                             tags=tags, score_name=args.eval_fn, model=self._template(name),
                             provenance=build_provenance(self.session.notebook_path(), source="%mvc_merge"),
                             **self.session.trust(args.unsafe), **params)
        if build_into:
            # a new variable holds a copy: the model's own variable (and its HEAD) stay where they are
            self.session.namespace[build_into] = repo.checkout(version.id, name=version.name, move_head=False,
                                                               **self.session.trust(args.unsafe))
        print(merge_line(version, into=args.into))
        return version


def merge_line(version, into: str | None = None) -> str:
    """What %mvc_merge prints: the method, ingredients, score, what was written, where it went."""
    report = version.report
    stats = version.stats
    parts = [f"merged {version.short_id} {version.name}: {version.message}"]
    if report is not None and report.score is not None:
        parts.append(f"{report.score_name or 'score'}={format_number(report.score)}")
    if stats is not None:
        parts.append("already stored" if not stats.new_version
                     else f"{stats.tensors_written} tensors written, {format_bytes(stats.bytes_written)}")
    if into:
        parts.append(f"loaded into {into}")
    return "; ".join(parts)
