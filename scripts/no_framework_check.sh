#!/usr/bin/env bash
# A PyTorch and scikit-learn user's environment: a fresh venv with `pip install ".[torch,sklearn]"`
# only (plus the test runner), where TensorFlow and Keras must be absent; there the PyTorch,
# scikit-learn and framework-free tests and a notebook-style magic session (tests/test_extras.py) run,
# and the tests needing Keras, LightGBM or JAX skip. A CI step (.ci/run). Exit status: non-zero when
# the install brings TensorFlow or Keras, or a test fails.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${NO_FRAMEWORK_PYTHON:-python3}
start=$(date +%s)
work=$(mktemp -d "${TMPDIR:-/tmp}/mvc-no-framework.XXXXXX")
trap 'rm -rf "$work"' EXIT
unset PYTHONPATH MVC_DIR VIRTUAL_ENV PYTEST_ADDOPTS
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_PROGRESS_BAR=off

"$python" -m venv "$work/venv"
# torch==2.13.0: the CPU build from pip's find-links, as in the `test` extra (see README).
"$work/venv/bin/python" -m pip install -qq ".[torch,sklearn]" "torch==2.13.0" pytest pytest-timeout pytest-xdist \
    hypothesis
echo "no-framework: installed in $(( $(date +%s) - start ))s"
"$work/venv/bin/python" - <<'PY'
import importlib.util

present = [m for m in ("tensorflow", "keras", "tf_keras") if importlib.util.find_spec(m) is not None]
assert not present, f'pip install ".[torch,sklearn]" brought {present}'
print("no-framework: TensorFlow and Keras are not installed")
PY
"$work/venv/bin/python" -m pytest -q -p no:cacheprovider tests/test_extras.py tests/test_torch_adapter.py \
    tests/test_sklearn_adapter.py tests/test_optimizer_state.py tests/test_magics_core.py tests/test_store_api.py \
    tests/test_cli.py tests/test_merge_magic.py tests/test_dtypes.py
echo "no-framework: passed in $(( $(date +%s) - start ))s"
