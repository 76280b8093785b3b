"""The benchmark script runs end to end (tiny model, one repetition); timings are never asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_smoke_run_writes_json_and_markdown_with_every_case(tmp_path):
    out_json = tmp_path / "results.json"
    out_md = tmp_path / "benchmarks.md"
    out_md.write_text("# Benchmarks\n\nprose kept\n\n<!-- benchmark-results:begin -->\nold\n"
                      "<!-- benchmark-results:end -->\n\nmore prose\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3", "MVC_PROGRESS": "0"}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", "--json", str(out_json), "--out", str(out_md),
         "--tmp", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads(out_json.read_text())
    cases = {r["case"]: r for r in data["results"]}
    for case in ("%load_ext mvc_magics", "first commit", "re-commit unchanged", "commit, last layer changed",
                 "10 versions, last layer changed", "checkout into existing model", "%mvc_status, unchanged",
                 "resolve best:val_loss", "log -n 20"):
        assert case in cases, sorted(cases)
    first = cases["first commit"]
    assert set(first["ratios"]) >= {"save_weights", "model.save(.keras)", "raw write+fsync"}
    assert first["ours_seconds"]["n"] == 1 and first["ours_seconds"]["median"] > 0
    assert cases["checkout into existing model"]["ratios"]["load_weights"]["median"] > 0
    # Loading the extension must not pull in TensorFlow, whatever the timing.
    assert cases["%load_ext mvc_magics"]["figures"]["tensorflow or keras imported"] is False
    # A commit that changed only the head writes exactly the head's bytes.
    last = cases["commit, last layer changed"]["figures"]
    assert last["tensor bytes written"] == last["changed bytes"]
    merged = cases["merge (average) of 5 versions"]
    assert merged["ours_seconds"]["n"] == 1 and "load_state of the 5 inputs" in merged["ratios"]
    assert "merge (average) of 5 versions, into the live model" in cases
    assert data["meta"]["profile"] == "smoke"
    text = out_md.read_text()
    assert "prose kept" in text and "more prose" in text and "\nold\n" not in text
    assert "| first commit | tiny |" in text
    assert not any(p.name.startswith("mvc-bench-") for p in tmp_path.iterdir())  # workspace removed


def test_coding_benchmark_quick_run_reports_every_target(tmp_path):
    out_json = tmp_path / "coding.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3", "MVC_PROGRESS": "0"}
    done = subprocess.run([sys.executable, "-m", "benchmarks.coding", "--quick", "--json", str(out_json)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out_json.read_text())
    cases = {row["case"].split(" (")[0] for row in rows}
    for case in ("3 Adam epoch checkpoints / 3 raw copies", "one float32 version / raw bytes",
                 "one bfloat16 version / raw bytes", "coding throughput", "first commit / safetensors save_file+fsync",
                 "checkout of the newest version", "checkout of the oldest of the newest group", "merge",
                 "10 head-only fine-tunes / one copy"):
        assert case in cases, sorted(cases)
    ratios = {row["case"]: row.get("ratio") for row in rows}
    assert 0 < ratios["one float32 version / raw bytes"] < 1  # trained floats always code smaller


def test_speed_benchmark_smoke_run_reports_issue_24_rows(tmp_path):
    out_json = tmp_path / "speed.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3", "MVC_PROGRESS": "0",
           "MVC_PACK_MB": "0.001"}  # every commit of the small model passes it: the automatic pack runs
    done = subprocess.run([sys.executable, "-m", "benchmarks.speed", "--smoke", "--only", "torch,loop,epochs,merge",
                           "--json", str(out_json), "--tmp", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads(out_json.read_text())
    assert "loadavg at start" in data["run"]  # every figure names its run and the load
    cases = {r["case"]: r for r in data["results"]}
    assert set(cases["first commit"]["ratios"]) == {"torch.save+fsync", "safetensors save_file+fsync"}
    assert set(cases["checkout into the live model"]["ratios"]) == {
        "torch.load+load_state_dict", "safetensors load_file+load_state_dict"}
    loop = cases["commit_every(1): blocked per commit, steady state (2 steps)"]
    assert "torch.save (no fsync)" in loop["ratios"]
    assert loop["figures"]["first hand-off (allocates the copy's buffers), median s"] > 0
    assert "torch.save (no fsync)" in cases["commit_every(1): the hand-off alone (background idle)"]["ratios"]
    merged = cases["merge (average) of 5 versions"]
    assert set(merged["ratios"]) == {"load_state of the 5 inputs", "safetensors load_file+copy of the 5 inputs"}
    assert "peak RSS growth / model" in merged["figures"]
    packed = cases["3 Adam epoch checkpoints, after the automatic pack"]["figures"]
    assert packed["loose bytes left"] == 0 and packed["store objects / raw copies"] > 0  # tiny: HDF5 overhead
    assert "safetensors load+assign" in cases["oldest of 3 checkpoints: checkout"]["ratios"]
