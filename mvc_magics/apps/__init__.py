"""Front ends outside IPython: the ``mvc`` command line, the quickstart demo and the notebook runner."""
