"""%mvc_compare: weighted metric comparison, with optional parameter diff, plots and widget panel."""

from __future__ import annotations

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments
from IPython.display import display

from ..core.compare import Comparison
from ..errors import CompareError
from ..operations.compare import DEFAULT_LIMIT
from ..plots.charts import FigureImage, plot_diff, plot_metrics, plot_scores
from ..widgets import widgets_available
from .core import parse_pairs
from .session import MVCSession, parse_line, user_errors


def parse_weights(groups: list[list[str]] | None) -> dict[str, float] | None:
    """``--weights acc=2,latency=0.5`` (repeatable) -> {"acc": 2.0, "latency": 0.5}; None when absent."""
    pairs = parse_pairs(groups, "weight")
    if not pairs:
        return None
    weights: dict[str, float] = {}
    for key, text in pairs:
        if key in weights:
            raise CompareError(f"weight of {key!r} is given twice")
        try:
            weights[key] = float(text)
        except ValueError:
            raise CompareError(f"weight of {key!r} is not a number: {text!r}") from None
    return weights


def parse_directions(groups: list[list[str]] | None) -> dict[str, str] | None:
    """``--direction latency=min,f1=max`` -> {"latency": "min", "f1": "max"}."""
    pairs = parse_pairs(groups, "direction")
    return dict(pairs) or None


@magics_class
class CompareMagics(Magics):
    """Compare model versions: weighted metrics, parameter diffs, plots and a widget panel."""

    def __init__(self, shell, session: MVCSession) -> None:
        super().__init__(shell)
        self.session = session

    @line_magic
    @magic_arguments()
    @argument("refs", nargs="*", metavar="REF", help="versions to compare (default: the model's most recent -n)")
    @argument("--model", default=None, help="the model whose versions are compared")
    @argument("--weights", nargs="+", action="append", metavar="K=W",
              help="metric weights, e.g. --weights val_acc=2,latency=0.5 (unnamed metrics weigh 0)")
    @argument("--direction", nargs="+", action="append", metavar="K=min|max",
              help="override a metric's inferred direction, e.g. --direction score=min")
    @argument("--baseline", default=None, metavar="REF", help="what 'D vs base' is measured against (default: oldest)")
    @argument("-n", type=int, default=DEFAULT_LIMIT, help="with no REF: how many recent versions (0: all)")
    @argument("--diff", action="store_true", help="also show the parameter diff of baseline -> best")
    @argument("--plot", action="store_true", help="also draw scores, metrics (and the diff with --diff)")
    @argument("--widget", action="store_true", help="interactive panel (Jupyter with ipywidgets; else the table)")
    @argument("--mixed", action="store_true", help="allow versions of different models")
    @user_errors
    def mvc_compare(self, line: str):
        """Rank versions by weighted metrics; return the Comparison (with --widget: the panel).

        D(A,B) = sum_i w_i |M_i^A - M_i^B| on raw values, a range-normalized D, and a weighted
        score in [0, 1] per version (docs/compare.md). ``c = %mvc_compare`` keeps the result.
        """
        args = parse_line(self.mvc_compare, line)
        if args.n < 0:
            raise UsageError("-n must be 0 (all) or a positive count")
        repo = self.session.repo
        name = self.session.model_for_ref(args.model)
        options = {"name": name, "weights": parse_weights(args.weights), "baseline": args.baseline,
                   "directions": parse_directions(args.direction)}
        comparison = repo.compare(args.refs or None, limit=args.n or None, allow_mixed=args.mixed, **options)
        if args.widget:
            if widgets_available(self.shell):
                return repo.compare_panel(args.refs or None, namespace=self.session.namespace,
                                          limit=args.n or None, **options)
            print("(the widget panel needs Jupyter with ipywidgets; showing the table)")
        diff = self._diff(comparison, args.mixed) if args.diff else None
        if diff is not None:
            display(diff)
        if args.plot:
            self._plot(comparison, diff)
        return comparison


    def _diff(self, comparison: Comparison, mixed: bool):
        """Baseline -> best (or -> the runner-up when the baseline is the best)."""
        base = comparison.baseline
        others = [comparison.versions[i] for i in comparison.display_order() if comparison.versions[i].id != base.id]
        target = others[0]
        return self.session.repo.diff(base.id, target.id, allow_mixed=mixed)

    def _plot(self, comparison: Comparison, diff) -> None:
        from matplotlib.figure import Figure

        figure = Figure(figsize=(10, 0.35 * len(comparison.versions) + 2.6), layout="constrained")
        left, right = figure.subplots(1, 2, width_ratios=[1, 1.4])
        plot_scores(comparison, ax=left)
        plot_metrics(comparison, scaled=True, ax=right)
        display(FigureImage(figure, f"scores and metrics of {comparison.model}"))
        if diff is not None:
            display(FigureImage(plot_diff(diff).figure))
