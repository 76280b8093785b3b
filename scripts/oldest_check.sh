#!/usr/bin/env bash
# The oldest releases pyproject.toml allows: a fresh venv with every core dependency and the `keras`
# extra at its lower bound (.ci/oldest.txt) runs a focused subset (commit/checkout/refs/provenance
# cell numbers, the Keras round trip, metrics and HEAD rules), so the ranges promise only what was
# tested. A CI step (.ci/run). Exit status: non-zero when the install or a test fails.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${OLDEST_PYTHON:-python3}
start=$(date +%s)
work=$(mktemp -d "${TMPDIR:-/tmp}/mvc-oldest.XXXXXX")
trap 'rm -rf "$work"' EXIT
unset PYTHONPATH MVC_DIR VIRTUAL_ENV PYTEST_ADDOPTS
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_PROGRESS_BAR=off

"$python" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -qq --only-binary=:all: -c .ci/oldest.txt -e ".[keras]" pandas pytest \
    pytest-timeout pytest-xdist
echo "oldest: installed in $(( $(date +%s) - start ))s"
"$work/venv/bin/python" -m pip list 2>/dev/null \
    | grep -iE "^(ipython|numpy|h5py|blake3|zstandard|tqdm|tensorflow-cpu|tensorflow_cpu|keras) "
"$work/venv/bin/python" -m pytest -q -p no:cacheprovider tests/test_provenance.py tests/test_magics_core.py \
    tests/test_store_api.py tests/test_keras_roundtrip.py tests/test_head_per_notebook.py \
    tests/test_metrics_are_facts.py tests/test_refs_and_names.py -k "not tag_deleted"
echo "oldest: passed in $(( $(date +%s) - start ))s"
