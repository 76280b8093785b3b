"""Stable entry point of the quickstart demo: ``python -m mvc_magics.demo [FOLDER]``.

The code lives in :mod:`mvc_magics.apps.demo`.
"""

from .apps.demo import find_notebook, main

__all__ = ["find_notebook", "main"]

if __name__ == "__main__":
    raise SystemExit(main())
