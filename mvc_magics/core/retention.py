"""Retention policies: which versions of a model a bounded history keeps.

A policy is a list of rules, each keeping some versions; a version is kept when any rule keeps it.
``best:METRIC:N`` keeps the N best by a metric (direction inferred as in refs, or given:
``best:val_loss:5:min``), ``last:N`` the N newest, ``tagged`` every tagged version. Tagged and
protected versions, and the version a model's HEAD is at, are always kept whatever the rules say:
a policy bounds history, it never takes away what someone named or is standing on.

>>> RetentionPolicy.parse(["best:val_loss:2", "last:1"]).rules
(Rule(kind='best', n=2, metric='val_loss', direction='min'), Rule(kind='last', n=1, metric=None, direction=None))
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..errors import InvalidPolicyError
from .refs import infer_direction
from .version import Version


@dataclass(frozen=True)
class Rule:
    kind: str  # best, last, tagged
    n: int = 0
    metric: str | None = None
    direction: str | None = None

    def __str__(self) -> str:
        if self.kind == "best":
            return f"best:{self.metric}:{self.n}:{self.direction}"
        return f"last:{self.n}" if self.kind == "last" else "tagged"


def _count(text: str, spec: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 1:
        raise InvalidPolicyError(f"--keep {spec!r}: the count must be a whole number >= 1")
    return n


def parse_rule(spec: str) -> Rule:
    """One ``--keep`` rule: ``best:METRIC:N[:min|max]``, ``last:N`` or ``tagged``."""
    parts = spec.strip().split(":")
    if parts == ["tagged"]:
        return Rule("tagged")
    if parts[0] == "last" and len(parts) == 2:
        return Rule("last", _count(parts[1], spec))
    if parts[0] == "best" and len(parts) in (3, 4) and parts[1]:
        direction = parts[3] if len(parts) == 4 else infer_direction(parts[1])
        if direction not in ("min", "max"):
            raise InvalidPolicyError(f"--keep {spec!r}: the direction must be min or max")
        return Rule("best", _count(parts[2], spec), parts[1], direction)
    raise InvalidPolicyError(f"--keep {spec!r}: expected best:METRIC:N[:min|max], last:N or tagged")


@dataclass(frozen=True)
class RetentionPolicy:
    """The rules of a retention policy (see the module docstring)."""

    rules: tuple[Rule, ...]

    @classmethod
    def parse(cls, specs: Iterable[str] | str | RetentionPolicy) -> RetentionPolicy:
        if isinstance(specs, RetentionPolicy):
            return specs
        specs = [specs] if isinstance(specs, str) else list(specs)
        if not specs:
            raise InvalidPolicyError("a retention policy needs at least one --keep rule")
        return cls(tuple(parse_rule(s) for s in specs))

    def __str__(self) -> str:
        return " ".join(f"--keep {rule}" for rule in self.rules)

    def keep(self, history: Sequence[Version]) -> set[str]:
        """The ids of ``history`` (one model's versions, newest first) this policy keeps."""
        kept = {v.id for v in history if v.tags or v.protected_tags or v.is_head or v.heads}  # any notebook's HEAD
        for rule in self.rules:
            if rule.kind == "last":
                kept.update(v.id for v in history[:rule.n])
            elif rule.kind == "best":
                scored = [v for v in history if isinstance(v.metrics.get(rule.metric), int | float)
                          and math.isfinite(v.metrics[rule.metric])]
                sign = 1 if rule.direction == "min" else -1
                # Ties go to the newer version (history is newest first and the sort is stable).
                scored.sort(key=lambda v: sign * v.metrics[rule.metric])
                kept.update(v.id for v in scored[:rule.n])
        return kept


@dataclass
class RetentionReport:
    """What a retention policy keeps and removes (``dry_run``: nothing was removed yet), and the
    gc that reclaimed the space."""

    policy: RetentionPolicy
    kept: list[Version]
    removed: list[Version]
    dry_run: bool
    gc: object = None  # the GcReport, when the policy was applied

    @property
    def bytes_freed(self) -> int:
        return int(self.gc) if self.gc is not None else 0

    def __str__(self) -> str:
        verb = "would remove" if self.dry_run else "removed"
        lines = [f"{self.policy}: keeps {len(self.kept)} version(s), {verb} {len(self.removed)}"]
        lines += [f"  {verb} {v.summary()}" for v in self.removed]
        if self.gc is not None:
            lines.append(str(self.gc))
        return "\n".join(lines)

    __repr__ = __str__
