"""Stable entry point of the headless notebook runner: ``python -m mvc_magics.notebook_runner``.

The code lives in :mod:`mvc_magics.apps.notebook_runner`.
"""

from .apps.notebook_runner import NotebookRun, error_outputs, kernel_environment, main, run_notebook, save_figures

__all__ = ["NotebookRun", "error_outputs", "kernel_environment", "main", "run_notebook", "save_figures"]

if __name__ == "__main__":
    raise SystemExit(main())
