"""Every version records the git state of the code it was made from (real git repositories in tmp_path)."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest

from mvc_magics import Repo
from mvc_magics.core.details import VersionDetails
from mvc_magics.core.git_provenance import (
    MAX_DIFF_CHARS,
    bounded_diff,
    choose_remote,
    parse_status,
    strip_credentials,
)
from mvc_magics.operations import git_state

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="the git binary is needed")


def git(folder, *args) -> str:
    return subprocess.run(["git", "-C", str(folder), *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def work_tree(tmp_path, monkeypatch):
    """A git work tree with one commit, a remote whose URL carries a token, and the cwd inside it."""
    root = tmp_path / "project"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    git(root, "config", "user.email", "t@example.com")
    git(root, "config", "user.name", "t")
    (root / "train.py").write_text("lr = 0.01\n")
    git(root, "add", "train.py")
    git(root, "commit", "-q", "-m", "first")
    git(root, "remote", "add", "origin", "https://x-access-token:ghp_SECRET@github.com/org/project.git")
    monkeypatch.chdir(root)
    return root


def model(seed: float = 0.0) -> dict[str, np.ndarray]:
    return {"w": np.full((3, 2), seed, np.float32), "b": np.zeros(2, np.float32)}


# -- git's output read without a repository ------------------------------------------------------

def test_status_parsing():
    sha = "a" * 40
    assert parse_status(f"# branch.oid {sha}\n# branch.head main\n") == (sha, "main", False)
    assert parse_status(f"# branch.oid {sha}\n# branch.head (detached)\n1 .M N... x\n") == (sha, None, True)
    assert parse_status("# branch.oid (initial)\n# branch.head main\n") == (None, "main", False)


@pytest.mark.parametrize(("url", "expected"), [
    ("https://user:pass@github.com/o/r.git", "https://github.com/o/r.git"),
    ("https://ghp_token@github.com:8443/o/r.git?private_token=x", "https://github.com:8443/o/r.git"),
    ("ssh://git@gitlab.com/o/r.git", "ssh://git@gitlab.com/o/r.git"),
    ("ssh://git:pw@gitlab.com/o/r.git", "ssh://gitlab.com/o/r.git"),
    ("git@github.com:o/r.git", "git@github.com:o/r.git"),
    ("/srv/git/r.git", "/srv/git/r.git"),
])
def test_remote_urls_lose_their_credentials(url, expected):
    assert strip_credentials(url) == expected


def test_the_tracked_remote_wins_then_origin_then_the_first():
    config = "remote.backup.url /b\nremote.origin.url /o\nbranch.main.remote backup\n"
    assert choose_remote(config, "main") == "/b"
    assert choose_remote(config, "other") == "/o"
    assert choose_remote("remote.z.url /z\n", None) == "/z"
    assert choose_remote("", "main") is None


def test_a_long_diff_is_cut_on_a_line_with_a_note():
    diff = "".join(f"+line {i}\n" for i in range(20_000))
    cut = bounded_diff(diff)
    assert len(cut) < MAX_DIFF_CHARS + 200 and cut.endswith("(the rest is not recorded)\n")
    assert diff.startswith(cut.rsplit("# … diff cut", 1)[0])
    assert bounded_diff("+a\n") == "+a\n"


# -- real repositories ---------------------------------------------------------------------------

def test_api_commit_records_commit_branch_remote_and_a_clean_tree(work_tree):
    with Repo(work_tree / ".mvc") as repo:  # the store inside the work tree, untracked
        entry = repo.commit(model(), "m").provenance["git"]
    assert entry == {"commit": git(work_tree, "rev-parse", "HEAD").strip(), "branch": "main", "dirty": False,
                     "remote": "https://github.com/org/project.git", "path": "."}


def test_uncommitted_changes_are_recorded_as_the_diff_and_marked_in_log_and_show(work_tree):
    (work_tree / "train.py").write_text("lr = 0.05  # tried a larger step\n")
    with Repo(work_tree / ".mvc") as repo:
        version = repo.commit(model(1.0), "m", message="larger lr")
        entry = version.provenance["git"]
        assert entry["dirty"] is True
        assert "-lr = 0.01\n+lr = 0.05  # tried a larger step" in entry["diff"]
        assert entry["diff"].startswith("diff --git a/train.py b/train.py")
        log = str(repo.log("m"))
        assert f"{entry['commit'][:8]}+dirty" in log and "uncommitted changes" in log
        shown = VersionDetails(repo.get(version.id), code=True, rich=False).to_text()
        assert f"git         {entry['commit'][:12]} on main, dirty" in shown
        assert "+lr = 0.05  # tried a larger step" in shown
        brief = VersionDetails(repo.get(version.id), code=False, rich=False).to_text()
        assert "+lr = 0.05" not in brief and "--code shows them" in brief


def test_the_store_is_never_part_of_the_git_state(work_tree):
    """Even a store committed into git (tracked) neither dirties the tree nor enters the diff."""
    with Repo(work_tree / ".mvc") as repo:
        repo.commit(model(), "m")
        git(work_tree, "add", "-f", ".mvc")
        git(work_tree, "commit", "-q", "-m", "the store too")
        entry = repo.commit(model(2.0), "m").provenance["git"]  # writes new files into the tracked .mvc
    assert entry["dirty"] is False and "diff" not in entry
    assert git(work_tree, "status", "--porcelain", "--untracked-files=no")  # git itself sees .mvc changed


def test_detached_head_has_no_branch_and_a_huge_diff_is_bounded(work_tree):
    git(work_tree, "checkout", "-q", "--detach")
    (work_tree / "train.py").write_text("".join(f"x{i} = {i}\n" for i in range(30_000)))
    with Repo(work_tree / ".mvc") as repo:
        entry = repo.commit(model(3.0), "m").provenance["git"]
    assert entry["branch"] is None and entry["dirty"] is True
    assert MAX_DIFF_CHARS - 100 < len(entry["diff"]) < MAX_DIFF_CHARS + 200
    assert "diff cut after" in entry["diff"].splitlines()[-1]


def test_no_repository_no_commit_yet_or_no_git_binary_means_no_git_key(tmp_path, monkeypatch, work_tree):
    outside = tmp_path / "plain"
    outside.mkdir()
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    monkeypatch.chdir(outside)
    with Repo(outside / ".mvc") as repo:
        assert "git" not in repo.commit(model(), "m").provenance
    git(outside, "init", "-q")  # a repository without a commit: nothing to point to
    with Repo(outside / ".mvc") as repo:
        assert "git" not in repo.commit(model(4.0), "m").provenance
    monkeypatch.chdir(work_tree)
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    with Repo(work_tree / ".mvc") as repo:
        assert "git" not in repo.commit(model(5.0), "m").provenance


def test_a_slow_git_is_given_up_without_an_error(work_tree, monkeypatch, tmp_path):
    bin_dir = tmp_path / "slow-bin"
    bin_dir.mkdir()
    (bin_dir / "git").write_text("#!/bin/sh\nexec sleep 5\n")
    (bin_dir / "git").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.setattr(git_state, "GIT_TIMEOUT", 0.3)
    with Repo(work_tree / ".mvc") as repo:
        assert "git" not in repo.commit(model(), "m").provenance


def test_given_git_state_is_kept_and_merges_record_it_too(work_tree):
    given = {"git": {"commit": "b" * 40, "branch": "release", "dirty": False}}
    with Repo(work_tree / ".mvc") as repo:
        a = repo.commit(model(1.0), "m", provenance=given)
        b = repo.commit(model(3.0), "m")
        merged = repo.merge([a.id, b.id], name="m")
    assert a.provenance["git"]["branch"] == "release"
    assert merged.provenance["git"]["commit"] == git(work_tree, "rev-parse", "HEAD").strip()


# -- through the notebook: magics, autocommit, a training loop ----------------------------------

def test_magics_record_the_notebook_path_and_show_and_log_display_it(ip, tmp_path, capsys, monkeypatch):
    """``ip`` runs in tmp_path: make it a work tree with the notebook in a subfolder."""
    git(tmp_path, "init", "-q", "-b", "dev")
    git(tmp_path, "config", "user.email", "t@example.com")
    git(tmp_path, "config", "user.name", "t")
    (tmp_path / "nb").mkdir()
    (tmp_path / "nb" / "train.ipynb").write_text("{}\n")
    git(tmp_path, "add", "nb/train.ipynb")
    git(tmp_path, "commit", "-q", "-m", "notebook")
    monkeypatch.setitem(ip.user_ns, "__session__", str(tmp_path / "nb" / "train.ipynb"))  # the shell is shared
    ip.user_ns["w"] = model()
    ip.run_line_magic("mvc_commit", "w -m clean")
    (tmp_path / "nb" / "train.ipynb").write_text('{"cells": ["edited"]}\n')
    ip.run_line_magic("mvc_autocommit", "w on")
    assert ip.run_cell("w['b'] = w['b'] + 1.0").success  # autocommit makes the second version
    repo = ip.run_line_magic("mvc_log", "w")
    clean, dirty = repo[1].provenance["git"], repo[0].provenance["git"]
    assert (clean["branch"], clean["dirty"], clean["path"]) == ("dev", False, "nb/train.ipynb")
    assert dirty["dirty"] is True and '+{"cells": ["edited"]}' in dirty["diff"]
    ip.run_line_magic("mvc_autocommit", "w off")
    capsys.readouterr()
    print(ip.run_line_magic("mvc_show", "HEAD --model w --code"))
    shown = capsys.readouterr().out
    assert f"{dirty['commit'][:12]} on dev, dirty" in shown and "git path" in shown
    assert '+{"cells": ["edited"]}' in shown
    table = str(repo)
    assert f"{clean['commit'][:8]}+dirty" in table and f"{clean['commit'][:8]} " in table


def test_a_training_loop_commit_records_git_state(work_tree):
    from mvc_magics import commit_every

    weights = model()
    with commit_every(weights, 2, name="loop", repo=Repo(work_tree / ".mvc")) as run:
        for _ in range(2):
            weights["b"] += 1.0
            run.step(loss=1.0)
    assert run.versions[0].provenance["git"]["commit"] == git(work_tree, "rev-parse", "HEAD").strip()


def test_mvc_git_switches_the_diff_or_everything_off(work_tree, monkeypatch):
    (work_tree / "train.py").write_text("api_key = 'not for the model store'\n")
    with Repo(work_tree / ".mvc") as repo:
        monkeypatch.setenv("MVC_GIT", "nodiff")
        entry = repo.commit(model(1.0), "m").provenance["git"]
        assert entry["dirty"] is True and "diff" not in entry
        monkeypatch.setenv("MVC_GIT", "off")
        assert "git" not in repo.commit(model(2.0), "m").provenance


def test_an_unchanged_recommit_records_nothing_new_and_does_not_wait_for_git(work_tree, monkeypatch, tmp_path):
    with Repo(work_tree / ".mvc") as repo:
        first = repo.commit(model(), "m")
        bin_dir = tmp_path / "slow-bin"
        bin_dir.mkdir()
        (bin_dir / "git").write_text("#!/bin/sh\nexec sleep 5\n")  # waiting for it would take GIT_TIMEOUT (3 s)
        (bin_dir / "git").chmod(0o755)
        monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
        import time

        started = time.perf_counter()
        again = repo.commit(model(), "m")
        assert time.perf_counter() - started < git_state.GIT_TIMEOUT  # the content is stored: git is not awaited
    assert again.id == first.id and again.provenance["git"] == first.provenance["git"]


def test_mvc_show_names_the_commit_and_dirty_state(work_tree, capsys):
    from mvc_magics.apps.cli import run as mvc

    with Repo(work_tree / ".mvc") as repo:
        version = repo.commit(model(), "m")
    capsys.readouterr()
    assert mvc(["--store", str(work_tree / ".mvc"), "show", version.short_id]) == 0
    sha = git(work_tree, "rev-parse", "HEAD").strip()
    assert re.search(rf"\n  git +{sha[:12]} on main, clean\n", capsys.readouterr().out)


def test_git_runs_once_the_first_tensor_is_on_its_way_to_the_disk_and_is_still_recorded(work_tree, monkeypatch):
    """A commit starts git only after handing its first tensor to the writers: git's processes no
    longer take a core from the first tensor's hash (see operations.commit.commit)."""
    from mvc_magics.storage.snapshots import staging

    events: list[str] = []
    written = staging.StagedCommit._written
    monkeypatch.setattr(staging.StagedCommit, "_written",
                        lambda self, *a: (events.append("write"), written(self, *a))[1])
    read = git_state.git_state
    monkeypatch.setattr(git_state, "git_state", lambda *a, **k: (events.append("git"), read(*a, **k))[1])
    state = {"big": np.arange(3_000_000, dtype=np.float32), "b": np.zeros(2, np.float32)}  # 12 MB: hashed in threads
    with Repo(work_tree / ".mvc") as repo:
        version = repo.commit(state, "m")
        entry = version.provenance["git"]
    assert events.index("write") < events.index("git")
    assert entry["commit"] == git(work_tree, "rev-parse", "HEAD").strip() and entry["branch"] == "main"
