"""matplotlib figures over API results: metrics, scores, diffs and the version graph.

Each function takes an optional ``ax=`` and returns what it drew on; matplotlib is imported only when
a plot is made, so importing this package stays cheap.
"""

from .charts import FigureImage, plot_diff, plot_metric_history, plot_metrics, plot_scores
from .graph import layout_graph, plot_graph, text_graph

__all__ = ["FigureImage", "layout_graph", "plot_diff", "plot_graph", "plot_metric_history", "plot_metrics",
           "plot_scores", "text_graph"]
