"""Four processes commit 50 versions each (moving tags) while a reader reads: nothing is lost or torn."""

from __future__ import annotations

from reliability_helpers import load_script


def test_four_writers_and_a_reader_share_one_store(tmp_path):
    soak = load_script("concurrency_soak")
    figures = soak.run_concurrency(tmp_path / ".mvc", writers=4, versions=50)
    # run_concurrency raises SoakFailure on any broken promise; these are the figures it checked.
    assert figures["versions"] == 200
    assert figures["reader"]["logs"] >= 1 and figures["reader"]["loads"] >= 1
