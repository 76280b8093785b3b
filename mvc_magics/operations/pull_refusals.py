"""What a pull refused: each bad remote object named on its own, so one never blocks the rest."""

from __future__ import annotations

import contextlib
from pathlib import Path

from ..core.reports import TransferReport


def refusal_summary(report: TransferReport, limit: int = 600) -> str:
    """One line: how many versions arrived, and each refused object by name (the report lists them
    one a line)."""
    names = [key[:12] if len(key) == 64 else key for key in report.rejected]
    named = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")
    reasons = "; ".join(report.rejected.values())
    if len(reasons) > limit:
        reasons = reasons[:limit].rsplit("; ", 1)[0] + "; ... (the report names each)"
    return (f"{len(report.versions)} new version(s) pulled from {report.remote}, {len(report.rejected)} "
            f"object(s) refused and not imported ({named}), everything else was pulled: {reasons}")


def refuse(report: TransferReport, staged: dict[str, Path], oid: str, exc: BaseException) -> None:
    """Name ``oid`` in the report with the one-line reason it was refused, and drop its download."""
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if isinstance(exc, FileNotFoundError):
        reason = "missing (listed in the remote's log, but not there)"
    tmp = staged.pop(oid, None)
    if tmp is not None:  # h5py's message names the download's temporary name: the object id says it
        reason = reason.replace(f"snapshot {tmp.name} ", "").replace(str(tmp), "the download")
    named = reason.startswith(f"remote object {oid[:12]}")
    report.rejected[oid] = reason[:300] if named else f"remote object {oid[:12]}: {reason[:300]}"
    if tmp is not None:
        with contextlib.suppress(OSError):
            tmp.unlink()
