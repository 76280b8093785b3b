"""Showing the audit log, and describing environment failures (disk full, permissions) in one line."""

from __future__ import annotations

import errno
import html
import shutil
from pathlib import Path

from .tables import Table


class AuditTrail(list):
    """The result of ``repo.audit_log()``: ``AuditEntry`` items, newest first, shown as a table."""

    def table(self) -> Table:
        rows = []
        for entry in self:
            ids = ", ".join(i[:8] for i in entry.ids[:4]) + (f" +{len(entry.ids) - 4}" if len(entry.ids) > 4 else "")
            rows.append([entry.seq, entry.time[:19].replace("T", " "), entry.who, entry.op, entry.name or "",
                         ids, _detail(entry.detail)])
        return Table(["#", "time (UTC)", "who", "operation", "model", "versions", "detail"], rows)

    def __str__(self) -> str:
        return self.table().to_text() if self else "the audit log is empty"

    def _repr_pretty_(self, printer, cycle: bool) -> None:
        printer.text(str(self))

    def _repr_html_(self) -> str:
        return self.table().to_html() if self else f"<p>{html.escape(str(self))}</p>"


def _detail(detail: dict) -> str:
    parts = []
    for key, value in sorted(detail.items()):
        if value in (None, "", [], {}, False):
            continue
        text = ", ".join(str(v)[:12] for v in value) if isinstance(value, list) else str(value)
        parts.append(f"{key}={text}")
    line = "; ".join(parts)
    return line if len(line) <= 70 else line[:67] + "..."


_SPACE = (errno.ENOSPC, errno.EDQUOT)
_DENIED = (errno.EACCES, errno.EPERM)


def write_failure(exc: BaseException, store: Path) -> str:
    """One line saying why a write into ``store`` failed and that nothing was committed."""
    code = getattr(exc, "errno", None)
    text = str(exc)
    if code == errno.EFBIG or "File too large" in text:
        reason = "the file size limit was reached (File too large)"
    elif code in _SPACE or "No space left" in text or "disk is full" in text:
        reason = "no space left on the device"
        try:
            reason += f" ({shutil.disk_usage(store).free // 1024} KiB free)"
        except OSError:
            pass
    elif code in _DENIED or "Permission denied" in text:
        reason = "permission denied"
    elif code == errno.EROFS or "Read-only file system" in text:
        reason = "the store is on a read-only file system"
    else:
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        reason = getattr(exc, "strerror", None) or first
    return f"cannot write to the store {store}: {reason}; nothing was committed, earlier versions are intact"
