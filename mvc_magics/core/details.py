"""One version explained: metadata and provenance, as text (terminals) or HTML (Jupyter).

``VersionDetails(version, code=True)`` is what ``%mvc_show REF --code`` returns; it holds the
:class:`~mvc_magics.Version` and renders; it decides nothing.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

from .git_provenance import describe
from .merge_report import redo_line
from .provenance import compile_summary
from .tables import format_bytes, format_number
from .version import Version


@dataclass
class VersionDetails:
    """A version with its provenance, ready to show. ``code``: include the full cell sources.

    ``rich`` False makes Jupyter show the text form too (``%config MVCMagics.output = "text"``).
    """

    version: Version
    code: bool = False
    rich: bool = True

    # -- the data -------------------------------------------------------------------------------

    def overview(self) -> list[tuple[str, str]]:
        v = self.version
        rows = [
            ("id", v.id), ("model", v.name), ("message", v.message), ("tags", ", ".join(v.tags)),
            ("parents", ", ".join(p[:8] for p in v.parents) or "— (first version)"),
            ("created", v.created.strftime("%Y-%m-%d %H:%M:%S UTC")), ("author", v.author),
            ("size", f"{format_bytes(v.nbytes)} in {v.n_tensors} tensors"),
        ]
        rows += [(f"metric {k}", format_number(val)) for k, val in sorted(v.metrics.items())]
        rows += [(f"param {k}", str(val)) for k, val in sorted(v.params.items())]
        return [(k, val) for k, val in rows if val]

    def origin(self) -> list[tuple[str, str]]:
        p = self.version.provenance
        rows = []
        for key in ("notebook", "script", "source"):
            if p.get(key):
                rows.append((key, str(p[key])))
        rows += self.git()
        merge = self.merge()
        if merge:  # a merge ran no optimizer: the inputs' compile setup it keeps is not how it was made
            return rows + merge
        training = self.training()
        rows += [(k, ", ".join(map(str, val)) if isinstance(val, list) else str(val)) for k, val in training.items()]
        return rows

    def merge(self) -> list[tuple[str, str]]:
        """How a merged version was made: method, inputs, base, weights, parameters, and the line to redo it."""
        record = self.version.extra.get("merge")
        if not isinstance(record, dict) or not isinstance(record.get("method"), str):
            return []
        rows = [("merge", str(record["method"]))]
        inputs = record.get("inputs")
        if isinstance(inputs, list) and inputs:
            rows.append(("merge inputs", ", ".join(_shown(i)[:8] for i in inputs)))
        if record.get("base"):
            rows.append(("merge base", f"{str(record['base'])[:8]} ({record.get('base_found', 'given')})"))
        weights = record.get("given_weights") or record.get("weights")
        if isinstance(weights, list) and weights:
            rows.append(("merge weights", ", ".join(_shown(w) for w in weights)))
        parameters = record.get("parameters")
        if isinstance(parameters, dict) and parameters:
            rows.append(("merge parameters", " ".join(f"{k}={_shown(v)}" for k, v in parameters.items())))
        line = redo_line(record)
        if line:
            rows.append(("redo", line))
        return rows

    def git(self) -> list[tuple[str, str]]:
        """The git state the version was made from: commit, branch and dirty state, remote, path."""
        entry = self.version.provenance.get("git")
        line = describe(entry)
        if line is None:
            return []
        rows = [("git", line)]
        rows += [(f"git {key}", str(entry[key])) for key in ("remote", "path") if entry.get(key)]
        return rows

    def git_diff(self) -> str:
        """``git diff HEAD`` as recorded when the tree was dirty (cut with a note when large)."""
        entry = self.version.provenance.get("git")
        diff = entry.get("diff") if isinstance(entry, dict) else None
        return diff if isinstance(diff, str) else ""

    def training(self) -> dict[str, Any]:
        """Optimizer, learning rate, loss and metrics (from provenance, else the compile config)."""
        summary = self.version.provenance.get("compile")
        if not isinstance(summary, dict):
            summary = compile_summary(self.version.extra.get("compile"))
        return {k: v for k, v in summary.items() if v not in (None, [], {})}

    def data(self) -> list[tuple[str, str, str, str, str]]:
        rows = []
        for name, fp in sorted((self.version.provenance.get("data") or {}).items()):
            dtype = fp.get("dtype")
            if isinstance(dtype, dict):
                dtype = ", ".join(f"{c}: {t}" for c, t in list(dtype.items())[:6]) + (" …" if len(dtype) > 6 else "")
            shape = "×".join(str(n) for n in fp.get("shape", [])) or "scalar"
            rows.append((name, str(fp.get("kind", "")), shape, str(dtype), str(fp.get("hash", ""))[:16]))
        return rows

    def cells(self) -> list[dict[str, Any]]:
        return list(self.version.provenance.get("cells") or [])

    def libraries(self) -> dict[str, str]:
        found = dict(self.version.libraries)
        found.update(self.version.provenance.get("libraries") or {})
        return dict(sorted(found.items()))

    # -- text -----------------------------------------------------------------------------------

    def to_text(self) -> str:
        v = self.version
        lines = [f"version {v.short_id} of {v.name}" + (" (HEAD)" if v.is_head else "")]
        width = max(len(k) for k, _ in self.overview() + self.origin() + [("", "")])
        lines += [f"  {k.ljust(width)}  {val}" for k, val in self.overview()]
        if self.origin():
            lines.append("provenance")
            lines += [f"  {k.ljust(width)}  {val}" for k, val in self.origin()]
        if self.data():
            lines.append("data")
            lines += [f"  {n}: {kind} {shape} {dtype} blake3:{digest}" for n, kind, shape, dtype, digest in self.data()]
        lines += self._cells_text()
        if self.git_diff():
            if self.code:
                lines.append("git diff HEAD (uncommitted changes when this version was made):")
                lines += [f"    {line}" for line in self.git_diff().splitlines()]
            else:
                lines.append("git diff: uncommitted changes recorded (--code shows them)")
        libs = self.libraries()
        if libs:
            lines.append("libraries")
            lines.append("  " + ", ".join(f"{k} {val}" for k, val in libs.items()))
        return "\n".join(lines)

    def _cells_text(self) -> list[str]:
        cells = self.cells()
        omitted = self.version.provenance.get("cells_omitted", 0)
        if not cells:
            return []
        lines = [f"code: {len(cells)} cell(s)" + (f" (+{omitted} older not kept)" if omitted else "")
                 + ("" if self.code else " (--code shows them in full)")]
        for cell in cells:
            label = f"In [{cell['number']}]" if cell.get("number") is not None else "cell"
            failed = " (failed)" if cell.get("failed") else ""
            if self.code:
                lines.append(f"  {label}{failed}:")
                lines += [f"    {line}" for line in cell["source"].splitlines()]
            else:
                first = next((s for s in cell["source"].splitlines() if s.strip()), "")
                lines.append(f"  {label}{failed}: {first[:80]}")
        return lines

    def __str__(self) -> str:
        return self.to_text()

    def __repr__(self) -> str:
        return self.to_text()

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(self.to_text())

    # -- HTML -----------------------------------------------------------------------------------

    def _repr_html_(self) -> str | None:
        if not self.rich:
            return None  # Jupyter then shows the text form
        esc = html.escape
        v = self.version

        def table(rows: list[tuple[str, ...]], header: tuple[str, ...] | None = None) -> str:
            head = ("<tr>" + "".join(f"<th style='text-align:left'>{esc(h)}</th>" for h in header) + "</tr>"
                    if header else "")
            body = "".join(
                "<tr>" + "".join(
                    (f"<th style='text-align:left'>{esc(c)}</th>" if i == 0 and not header
                     else f"<td style='text-align:left'>{esc(c)}</td>") for i, c in enumerate(row)) + "</tr>"
                for row in rows)
            return f"<table class='mvc-details'>{head}{body}</table>"

        parts = [f"<h4>Version {esc(v.short_id)} of {esc(v.name)}{' (HEAD)' if v.is_head else ''}</h4>",
                 table(self.overview())]
        if self.origin():
            parts += ["<h5>Provenance</h5>", table(self.origin())]
        if self.data():
            parts += ["<h5>Data</h5>", table(self.data(), ("variable", "kind", "shape", "dtype", "blake3"))]
        cells = self.cells()
        if cells:
            parts.append(f"<h5>Code ({len(cells)} cells)</h5>")
            for cell in cells:
                label = f"In [{cell['number']}]" if cell.get("number") is not None else "cell"
                source = cell["source"] if self.code else next(
                    (s for s in cell["source"].splitlines() if s.strip()), "")
                parts.append(f"<div><small>{esc(label)}{' (failed)' if cell.get('failed') else ''}</small>"
                             f"<pre style='margin:0 0 6px 0'>{esc(source)}</pre></div>")
        if self.git_diff() and self.code:
            parts += ["<h5>git diff HEAD (uncommitted changes)</h5>",
                      f"<pre style='margin:0 0 6px 0'>{esc(self.git_diff())}</pre>"]
        libs = self.libraries()
        if libs:
            parts.append("<h5>Libraries</h5><p>" + esc(", ".join(f"{k} {val}" for k, val in libs.items())) + "</p>")
        return "<div class='mvc-version-details'>" + "".join(parts) + "</div>"


def _shown(value: object) -> str:
    """A stored number as shown; anything else (a damaged record) as short text, never an error."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return format_number(value)
    return str(value)[:40]
