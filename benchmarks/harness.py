"""What every case shares: the result record, back-to-back timing of ours vs peers, a workspace."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .measure import Samples, quiet_gc, timed_cpu

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class CaseResult:
    """One case on one model: our times, the peers' times, per-repetition ratios, target."""

    case: str
    model: str
    model_bytes: int
    ours: Samples = field(default_factory=Samples)
    peers: dict[str, Samples] = field(default_factory=dict)
    ratios: dict[str, Samples] = field(default_factory=dict)
    cpu_ratios: dict[str, Samples] = field(default_factory=dict)
    figures: dict[str, float | int | str | None] = field(default_factory=dict)
    target: str = ""
    headline: str = ""  # the ratio or figure the target is about
    limit: float | None = None
    met: bool | None = None
    note: str = ""

    def check(self, value: float | None, limit: float, target: str, headline: str) -> None:
        self.target, self.headline, self.limit = target, headline, limit
        self.met = None if value is None or value != value else bool(value <= limit)

    def to_json(self) -> dict:
        return {
            "case": self.case, "model": self.model, "model_bytes": self.model_bytes,
            "ours_seconds": self.ours.to_json(),
            "peers_seconds": {k: v.to_json() for k, v in self.peers.items()},
            "ratios": {k: v.to_json() for k, v in self.ratios.items()},
            "cpu_ratios": {k: v.to_json() for k, v in self.cpu_ratios.items()},
            "figures": self.figures, "target": self.target, "headline": self.headline,
            "limit": self.limit, "met": self.met, "note": self.note,
        }


def side_by_side(result: CaseResult, reps: int, ours: Callable[[], object],
                 others: dict[str, Callable[[], object] | None], setup: Callable[[int], None] | None = None,
                 after: Callable[[object], None] | None = None, warmup: bool = False) -> None:
    """Run ``ours`` and each peer back to back, ``reps`` times, alternating which goes first.

    A ratio is taken within each repetition (ours / peer), so load from other processes that
    lasts longer than one repetition cancels out. With ``warmup`` every party first runs once
    untimed in the medians (ours first): that first call's time is kept in ``result.figures`` as
    ``first call ms: <who>`` (a checkout right after its commit may read the disk, see
    docs/benchmarks.md), so the medians compare repeated calls and the first one is still said.
    """
    others = {k: v for k, v in others.items() if v is not None}

    def call(who: str) -> tuple[float, float, object]:
        settle()
        return timed_cpu(ours if who == "ours" else others[who])

    if warmup:
        with quiet_gc():
            for who in ["ours", *others]:
                seconds, _cpu, value = call(who)
                result.figures[f"first call ms: {who}"] = round(seconds * 1000, 1)
                if who == "ours" and after is not None:
                    after(value)
    for rep in range(reps):
        if setup is not None:
            setup(rep)
        times: dict[str, float] = {}
        cpu: dict[str, float] = {}
        order = ["ours", *others] if rep % 2 == 0 else [*others, "ours"]
        with quiet_gc():
            for who in order:
                times[who], cpu[who], value = call(who)
                if who == "ours" and after is not None:
                    after(value)
        result.ours.add(times["ours"])
        for who in others:
            result.peers.setdefault(who, Samples()).add(times[who])
            result.ratios.setdefault(who, Samples()).add(times["ours"] / times[who])
            if cpu[who] > 0:
                result.cpu_ratios.setdefault(who, Samples()).add(cpu["ours"] / cpu[who])


def head_moved(repo, result: CaseResult) -> Callable[[object], None]:
    """``side_by_side``'s ``after`` for checkouts: wait (untimed) for HEAD's audited move, which the
    store's background worker makes once the checkout returned, so it never runs beside the next
    party's timed call; the median wait is kept as a figure (the move's own time, said, not hidden)."""
    waits = Samples()

    def after(_value: object) -> None:
        start = time.perf_counter()
        repo.store.background.wait()
        waits.add(time.perf_counter() - start)
        result.figures["HEAD move done after return, ms"] = round(waits.median * 1000, 2)

    return after


def settle() -> None:
    """Write back every dirty page before the next timed call (untimed).

    Keras and safetensors leave their files dirty in the page cache (no fsync); without this the
    kernel's dirty-page throttling would bill their deferred writeback to whoever writes next.
    """
    if hasattr(os, "sync"):
        os.sync()


class Workspace:
    """Temporary folders for stores and peer files (removed at the end)."""

    def __init__(self, root: str | None = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="mvc-bench-", dir=root))

    def fresh(self, name: str) -> Path:
        path = self.root / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
