"""Rendering results: the JSON file and the markdown table spliced into docs/benchmarks.md."""

from __future__ import annotations

import json
import platform
from pathlib import Path

from .harness import CaseResult
from .measure import Samples

BEGIN = "<!-- benchmark-results:begin -->"
END = "<!-- benchmark-results:end -->"


def _ms(seconds: float) -> str:
    if seconds != seconds:
        return "—"
    return f"{seconds * 1000:.0f} ms" if seconds >= 0.1 else f"{seconds * 1000:.1f} ms"


def _spread(samples: Samples, fmt) -> str:
    if not samples.values:
        return "—"
    if len(samples.values) == 1:
        return fmt(samples.median)
    return f"{fmt(samples.median)} [{fmt(samples.low)}–{fmt(samples.high)}]"


def _ratio(value: float) -> str:
    return f"{value:.2f}x"


def _figure(value: object) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int) and value > 10_000:
        return f"{value / 1e6:.2f} MB"
    if isinstance(value, float):
        return f"{value / 1e6:.2f} MB" if value > 10_000 else f"{value:.3g}"
    return str(value)


def markdown_table(results: list[CaseResult]) -> str:
    """One row per case: our median [min–max], each peer ratio, target and whether it is met."""
    lines = [
        "| case | model | mvc_magics, wall time | ratio to peers: median [min–max] of per-run wall-time ratios "
        "(median CPU-time ratio) | target | met |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        ratios = "<br>".join(
            f"{name}: {_spread(s, _ratio)}"
            + (f" (CPU {_ratio(r.cpu_ratios[name].median)})" if name in r.cpu_ratios else "")
            for name, s in r.ratios.items())
        figures = "<br>".join(f"{k}: {_figure(v)}" for k, v in r.figures.items())
        detail = "<br>".join(x for x in (ratios, figures, r.note) if x)
        met = "n/a" if r.met is None else ("yes" if r.met else "**no**")
        lines.append(f"| {r.case} | {r.model} | {_spread(r.ours, _ms)} | {detail or '—'} | {r.target} | {met} |")
    return "\n".join(lines)


def environment() -> dict:
    import h5py
    import numpy

    env = {"python": platform.python_version(), "numpy": numpy.__version__, "h5py": h5py.__version__,
           "machine": platform.machine(), "cpus": __import__("os").cpu_count()}
    try:
        import keras

        env["keras"] = keras.__version__
        env["backend"] = keras.backend.backend()
    except ImportError:  # pragma: no cover
        pass
    try:
        with open("/proc/loadavg") as handle:
            env["loadavg at start"] = handle.read().split()[:3]
    except OSError:
        pass
    return env


def write_json(path: Path, results: list[CaseResult], meta: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta, "results": [r.to_json() for r in results]}
    path.write_text(json.dumps(payload, indent=1) + "\n")


def write_markdown(path: Path, results: list[CaseResult], meta: dict) -> None:
    """Replace the table between the result markers in ``path`` (create the file if needed)."""
    env = ", ".join(f"{k} {v}" for k, v in meta.get("environment", {}).items())
    block = "\n".join([
        BEGIN,
        f"Run: `{meta.get('command', '')}` on {meta.get('started', '')} ({env}); "
        f"{meta.get('reps', '?')} repetitions per case, {meta.get('seconds', 0):.0f} s in all.",
        "",
        markdown_table(results),
        END,
    ])
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
