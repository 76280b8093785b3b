"""Stable entry point of the ``mvc`` command (and ``python -m mvc_magics.cli``).

The code lives in :mod:`mvc_magics.apps.cli`.
"""

from .apps.cli import build_parser, main, run

__all__ = ["build_parser", "main", "run"]

if __name__ == "__main__":
    raise SystemExit(main())
