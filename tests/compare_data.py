"""Small stores of dict-of-numpy versions with chosen metrics, for the compare tests."""

from __future__ import annotations

import numpy as np

# The hand-checked table of docs/compare.md: C has no loss.
HAND_TABLE = {
    "A": {"acc": 0.90, "loss": 0.30, "lat_ms": 50.0},
    "B": {"acc": 0.80, "loss": 0.20, "lat_ms": 10.0},
    "C": {"acc": 0.85, "lat_ms": 30.0},
}
HAND_WEIGHTS = {"acc": 2.0, "loss": 1.0, "lat_ms": 0.5}


def model(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "dense/kernel": rng.standard_normal((6, 4)).astype(np.float32),
        "dense/bias": rng.standard_normal(4).astype(np.float32),
        "out/kernel": rng.standard_normal((4, 2)).astype(np.float32),
        "out/bias": np.zeros(2, np.float32),
    }


def commit_table(repo, table: dict[str, dict[str, float]], name: str = "model") -> dict[str, object]:
    """Commit one version per row (distinct weights), message = row key; returns key -> Version."""
    versions = {}
    for seed, (key, metrics) in enumerate(table.items()):
        versions[key] = repo.commit(model(seed), name, message=key, metrics=metrics)
    return versions


def store_files(path) -> dict[str, bytes]:
    """Every file of a store except the SQLite files (a read may touch their shared memory)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file() and not p.name.startswith("index.sqlite")}
