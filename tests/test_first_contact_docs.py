"""What a newcomer reads is true and what they look for is there (issue 25, items 12 and 13)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _section(title: str) -> str:
    match = re.search(rf"^#+ {re.escape(title)}\n(.*?)(?=^#+ |\Z)", README, re.S | re.M)
    assert match, f"README has no section {title!r}"
    return match.group(1)


def test_resume_training_has_a_section_with_both_frameworks():
    text = _section("Resume training")
    assert "--optimizer" in text and "PyTorch" in text and "Keras" in text
    assert "%mvc_checkout" in text and "%mvc_commit" in text


def test_using_it_with_git_dvc_and_mlflow_is_short_and_links_the_bridges():
    text = _section("Using it with git, DVC and MLflow")
    assert ".gitignore" in text and ".mvc" in text and "DVC" in text and "MLflow" in text
    assert "(#with-git-mlflow-and-dvc)" in text
    assert len(text.split()) < 220


def test_the_python_api_section_does_not_list_two_frameworks_only():
    text = _section("The Python API")
    assert "Supported models: Keras 3" not in text
    assert "[Frameworks](#frameworks)" in text


def test_the_soup_claim_says_what_was_measured_with_its_spread():
    text = _section("Merging versions")
    assert "±" in text and "seeds" in text
    assert "96.3% test accuracy against 95.9%" not in text
