"""The long fuzz run: tests/test_fuzz.py with many more hypothesis examples.

    python scripts/fuzz_long.py --scale 20
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=20, help="times the suite's number of examples")
    args = parser.parse_args()
    env = dict(os.environ, MVC_FUZZ_SCALE=str(args.scale))
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    command = [sys.executable, "-m", "pytest", "tests/test_fuzz.py", "-q", "-p", "no:cacheprovider",
               "--hypothesis-show-statistics"]
    sys.exit(subprocess.call(command, cwd=ROOT, env=env))


if __name__ == "__main__":
    main()
