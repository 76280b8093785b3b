"""mvc_magics: model version control inside Jupyter notebooks.

``from mvc_magics import Repo`` for the plain Python API; ``%load_ext mvc_magics`` for the magics.
Importing this package imports neither IPython nor TensorFlow.
"""

from __future__ import annotations

from ._version import __version__
from .api import Repo
from .core.version import Version
from .errors import MVCError
from .integrations.loops import commit_every

__all__ = ["MVCError", "Repo", "Version", "__version__", "commit_every", "load_ipython_extension",
           "unload_ipython_extension"]


def load_ipython_extension(ipython) -> None:
    """Register the ``%mvc_*`` magics (called by ``%load_ext mvc_magics``)."""
    from .magics import load

    load(ipython)


def unload_ipython_extension(ipython) -> None:
    """Remove every magic and hook the extension registered."""
    from .magics import unload

    unload(ipython)
