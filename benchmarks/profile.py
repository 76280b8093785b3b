"""``python -m benchmarks.profile [MODEL]``: where the time of each operation goes (pyinstrument).

Profiles one first commit, one unchanged re-commit, one commit after changing the last layer,
one checkout and one status of MODEL (``dense_100mb`` by default), and prints the call trees.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("MVC_PROGRESS", "0")


def main(argv: list[str] | None = None) -> int:
    try:
        from pyinstrument import Profiler
    except ImportError:
        print("pip install pyinstrument (or mvc_magics[bench])", file=sys.stderr)
        return 1
    from mvc_magics import Repo

    from .cli import BUILDERS

    key = (argv if argv is not None else sys.argv[1:] or ["dense_100mb"])[0]
    bm = BUILDERS[key]()
    with tempfile.TemporaryDirectory(prefix="mvc-profile-") as tmp, Repo(Path(tmp) / ".mvc") as repo:
        first = None

        def first_commit() -> None:
            nonlocal first
            first = repo.commit(bm.model, "model")

        def changed_commit() -> None:
            bm.change_last_layer(seed=1)
            repo.commit(bm.model, "model")

        steps = [
            ("first commit", first_commit),
            ("re-commit, unchanged", lambda: repo.commit(bm.model, "model")),
            ("commit, last layer changed", changed_commit),
            ("checkout into the model", lambda: repo.checkout(first.id, bm.model)),
            ("status, unchanged", lambda: repo.status({"model": bm.model})),
        ]
        for label, step in steps:
            profiler = Profiler(interval=0.0005)
            profiler.start()
            step()
            profiler.stop()
            print(f"==== {label} ({bm.description})")
            print(profiler.output_text(unicode=False, color=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
