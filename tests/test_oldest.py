"""The second CI job installs the oldest releases pyproject.toml allows: its pins are the lower bounds."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def lower_bounds() -> dict[str, str]:
    """The core dependencies' lower bounds and the `keras` extra's (the job installs `.[keras]`)."""
    text = (ROOT / "pyproject.toml").read_text()
    bounds = {}
    for block in (r"^dependencies = \[(.*?)^\]", r"^keras = \[(.*?)^\]"):
        requirements = re.search(block, text, re.S | re.M).group(1)
        for name, version in re.findall(r'"([A-Za-z0-9_.\-]+)>=([0-9.]+)', requirements):
            bounds.setdefault(name.lower(), version)
    assert {"numpy", "keras", "tensorflow-cpu"} <= set(bounds), bounds
    return bounds


def pins() -> dict[str, str]:
    lines = (ROOT / ".ci" / "oldest.txt").read_text().splitlines()
    return {n.lower(): v for n, v in (line.split("==") for line in lines if line and not line.startswith("#"))}


def same(a: str, b: str) -> bool:
    def parts(v: str) -> list[int]:
        numbers = [int(p) for p in v.split(".")]
        return numbers + [0] * (3 - len(numbers))

    return parts(a) == parts(b)


def test_the_oldest_job_pins_every_core_dependency_at_its_lower_bound():
    bounds, pinned = lower_bounds(), pins()
    linux = {k: v for k, v in bounds.items() if k != "tensorflow"}  # CI installs tensorflow-cpu
    assert set(linux) <= set(pinned), set(linux) - set(pinned)
    assert {k: pinned[k] for k in linux if not same(pinned[k], linux[k])} == {}


def test_ci_runs_the_oldest_job():
    assert "scripts/oldest_check.sh" in (ROOT / ".ci" / "run").read_text()
    assert '-c .ci/oldest.txt -e ".[keras]"' in (ROOT / "scripts" / "oldest_check.sh").read_text()
