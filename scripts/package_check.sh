#!/usr/bin/env bash
# Release check: build the sdist and the wheel (`python -m build`), `twine check` them, look inside
# (the wheel is the package alone; the sdist has LICENSE, README and pyproject), then install the
# wheel alone, without any extra, into a fresh venv and use it from a folder with no source tree:
# `mvc --version` (the version of mvc_magics/_version.py), `mvc --help`, `%load_ext mvc_magics` in a
# real IPython shell, a commit and a checkout, `mvc log` on the store it left.
# Exit status: non-zero when any step fails.
#
#   scripts/package_check.sh            # uses python3
#   PACKAGE_PYTHON=python3.11 scripts/package_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
python=${PACKAGE_PYTHON:-python3}
start=$(date +%s)
work=$(mktemp -d "${TMPDIR:-/tmp}/mvc-package-check.XXXXXX")
trap 'rm -rf "$work"' EXIT
unset PYTHONPATH MVC_DIR VIRTUAL_ENV PYTEST_ADDOPTS
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_PROGRESS_BAR=off
version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' mvc_magics/_version.py)

# Build tools in a venv of their own: the build itself runs in build's isolated environment.
"$python" -m venv "$work/tools"
"$work/tools/bin/python" -m pip install -qq build twine
echo "package check: build tools installed in $(( $(date +%s) - start ))s"
"$work/tools/bin/python" -m build --sdist --wheel --outdir "$work/dist" . >"$work/build.log" 2>&1 \
    || { tail -20 "$work/build.log"; exit 1; }
"$work/tools/bin/python" -m twine check --strict "$work"/dist/*
wheel=$(ls "$work"/dist/mvc_magics-"$version"-py3-none-any.whl)
sdist=$(ls "$work"/dist/mvc_magics-"$version".tar.gz)

"$work/tools/bin/python" - "$wheel" "$sdist" <<'PY'
import sys
import tarfile
import zipfile

wheel, sdist = sys.argv[1:]
names = zipfile.ZipFile(wheel).namelist()
outside = sorted({n.split("/")[0] for n in names} - {"mvc_magics"} - {n.split("/")[0] for n in names
                                                                     if n.split("/")[0].endswith(".dist-info")})
assert not outside, f"the wheel carries more than the package: {outside}"
assert not [n for n in names if n.split("/")[1:2] in (["tests"], ["notebooks"], ["benchmarks"])], names
assert "mvc_magics/py.typed" in names and any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
members = {n.split("/", 1)[1] for n in tarfile.open(sdist).getnames() if "/" in n}
missing = {"LICENSE", "README.md", "pyproject.toml", "PKG-INFO", "mvc_magics/__init__.py", "tests/conftest.py"} - members
assert not missing, f"the sdist lacks {sorted(missing)}"
print(f"package check: wheel {len(names)} files (mvc_magics only), sdist {len(members)} files")
PY

# The wheel alone, core dependencies only, used from outside the checkout.
"$python" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -qq "$wheel"
mkdir "$work/use"
cd "$work/use"
[ "$("$work/venv/bin/mvc" --version)" = "mvc_magics $version" ]
# Output goes to a file first: `mvc ... | grep -q` under pipefail fails whenever grep exits before mvc
# finishes writing (mvc then meets a closed pipe), which made this check fail at random in CI.
"$work/venv/bin/mvc" --help >"$work/help.txt"
grep -q "Model version control" "$work/help.txt"
"$work/venv/bin/python" - "$repo" <<'PY'
import sys
from pathlib import Path

import numpy as np
from IPython.core.interactiveshell import InteractiveShell

import mvc_magics

repo = Path(sys.argv[1]).resolve()
where = Path(mvc_magics.__file__).resolve()
assert repo not in where.parents, f"the venv imports the checkout ({where}), not the installed wheel"
ip = InteractiveShell.instance()
ip.history_manager.enabled = False
ip.run_line_magic("load_ext", "mvc_magics")
ip.user_ns["model"] = {"w": np.ones((4, 3), np.float32), "b": np.zeros(3, np.float32)}
first = ip.run_line_magic("mvc_commit", "model -m first --metric val_mse=0.4")
ip.user_ns["model"]["w"] *= 3
ip.run_line_magic("mvc_commit", "model -m second --metric val_mse=0.9")
ip.run_line_magic("mvc_checkout", "best:val_mse")
assert ip.user_ns["model"]["w"][0, 0] == 1.0 and ip.run_line_magic("mvc_status", "")[0].head.id == first.id
frameworks = sorted(m for m in ("tensorflow", "keras", "torch", "sklearn", "jax") if m in sys.modules)
assert not frameworks, frameworks
print(f"package check: mvc_magics {mvc_magics.__version__} from {where.parent}: load_ext, commit, checkout")
PY
"$work/venv/bin/mvc" log >"$work/log.txt"
grep -q "second" "$work/log.txt"
echo "package check: passed in $(( $(date +%s) - start ))s"
