#!/usr/bin/env bash
# Binder check: build a fresh virtual environment from binder/requirements.txt alone, as repo2docker
# does (`pip install -r binder/requirements.txt` from the repository root), then run every notebook
# in it with that environment's own kernel, from outside the checkout (so the installed package is
# what the notebooks import). Exit status: non-zero when the install or any notebook fails.
#
#   scripts/binder_check.sh            # uses python3 (Binder's runtime.txt asks for 3.11)
#   BINDER_PYTHON=python3.11 scripts/binder_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
python=${BINDER_PYTHON:-python3}
start=$(date +%s)
work=$(mktemp -d "${TMPDIR:-/tmp}/mvc-binder-check.XXXXXX")
trap 'rm -rf "$work"' EXIT
unset PYTHONPATH MVC_DIR VIRTUAL_ENV
export JUPYTER_DATA_DIR="$work/jupyter-data"  # no user-level kernelspec may stand in for the venv's
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_PROGRESS_BAR=off

echo "binder check: fresh venv ($("$python" --version)) from binder/requirements.txt"
"$python" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q -r binder/requirements.txt
installed=$(( $(date +%s) - start ))
echo "binder check: installed in ${installed}s"

mkdir "$work/notebooks"
cp notebooks/*.ipynb "$work/notebooks/"
cd "$work"
export PATH="$work/venv/bin:$PATH"
"$work/venv/bin/python" - "$repo" <<'PY'
import sys
from pathlib import Path

import mvc_magics

repo = Path(sys.argv[1]).resolve()
where = Path(mvc_magics.__file__).resolve()
assert repo not in where.parents, f"the venv imports the checkout ({where}), not the installed package"
print(f"binder check: mvc_magics {mvc_magics.__version__} from {where.parent}")
PY
"$work/venv/bin/python" -m mvc_magics.notebook_runner --out "$work/runs" "$work"/notebooks/*.ipynb
echo "binder check: passed in $(( $(date +%s) - start ))s (install ${installed}s)"
