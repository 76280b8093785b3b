"""Showing the audit log: ``repo.audit_log()`` returns an :class:`AuditTrail`."""

from __future__ import annotations

import html

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
