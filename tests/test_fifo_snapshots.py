"""A FIFO planted as a snapshot file (issue 23 §5): every command that opens snapshot files goes
through the same checked open as refs (O_NOFOLLOW | O_NONBLOCK, fstat: a regular file), so it
refuses the FIFO in one line or skips it and names it, and never waits for a writer. Each command
runs in a child process with a timeout: a hang fails the test instead of the suite."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from mvc_magics import Repo
from mvc_magics.errors import IntegrityError, UnsafeFileError
from mvc_magics.storage.files.h5_open import open_hdf5

CHILD = textwrap.dedent("""
    import json, logging, sys
    import numpy as np
    from mvc_magics import Repo
    logged = []
    handler = logging.Handler()
    handler.emit = lambda record: logged.append(record.getMessage())
    logging.getLogger("mvc_magics").addHandler(handler)
    path, command, target = sys.argv[1], sys.argv[2], sys.argv[3]
    result = {"ok": None, "error": None, "logged": logged}
    live = {"w": np.full(4, 5.0, np.float32)}
    try:
        repo = Repo(path)
        out = {
            "open": lambda: "opened",
            "log": lambda: repo.log("m"),
            "reindex": lambda: repo.reindex(),
            "verify": lambda: repo.verify(),
            "gc": lambda: repo.gc(),
            "repack": lambda: repo.gc(repack=True),
            "load": lambda: repo.load_state(target),
            "checkout": lambda: repo.checkout(target, live, name="m"),
        }
        value = out[command]()
        result["ok"] = str(value)
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
    result["live"] = live["w"].tolist()
    print(json.dumps(result))
""")
COMMANDS = ("open", "log", "reindex", "verify", "gc", "repack", "load", "checkout")


def _run(store, command: str, target: str) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", CHILD, str(store), command, target], capture_output=True,
                          text=True, timeout=60, env=env)  # a hang is a TimeoutExpired: the test fails
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _snapshot_bytes(store) -> dict:
    return {p.name: p.read_bytes() for p in (store / "objects").rglob("*.h5") if p.is_file()}


@pytest.fixture
def store(tmp_path):
    path = tmp_path / ".mvc"
    with Repo(path) as repo:
        first = repo.commit({"w": np.ones(4, np.float32)}, "m")
        second = repo.commit({"w": np.zeros(4, np.float32)}, "m")
        repo.gc(repack=True)  # packed now: a repack below has no loose file to rewrite
    return path, first.id, second.id


@pytest.mark.parametrize("command", COMMANDS)
def test_a_fifo_replacing_a_version_file_is_refused_or_skipped_by_name(store, command):
    path, first, second = store
    victim = path / "objects" / second[:2] / f"{second}.h5"
    os.chmod(victim, 0o644)
    victim.unlink()
    os.mkfifo(victim)
    before = _snapshot_bytes(path)
    result = _run(path, command, second)
    said = " ".join(filter(None, [result["ok"], result["error"], *result["logged"]]))
    if command in ("load", "checkout"):  # reading it: one line naming it, the live model untouched
        assert result["error"] and "\n" not in result["error"]
        assert second[:12] in result["error"] and ("FIFO" in result["error"] or "unreadable" in result["error"])
        assert result["live"] == [5.0] * 4
    if command in ("verify", "reindex", "load", "checkout"):
        assert "is a FIFO, refused" in said and second in said
    if result["error"] is not None:
        assert "\n" not in result["error"]
    assert _snapshot_bytes(path) == before
    with Repo(path) as repo:  # the other version still reads back exactly
        assert repo.load_state(first)["w"].tolist() == [1.0] * 4


@pytest.mark.parametrize("command", COMMANDS[:6])
def test_a_fifo_planted_under_a_new_id_never_blocks_a_command(store, command):
    path, first, second = store
    planted = "ab" + "c" * 62
    (path / "objects" / "ab").mkdir(exist_ok=True)
    os.mkfifo(path / "objects" / "ab" / f"{planted}.h5")
    before = _snapshot_bytes(path)
    result = _run(path, command, first)
    assert result["error"] is None, result["error"]
    if command in ("open", "reindex", "verify"):  # scans name the file they skipped
        said = " ".join([result["ok"], *result["logged"]])
        assert f"{planted}.h5 is a FIFO, refused" in said
    assert _snapshot_bytes(path) == before
    with Repo(path) as repo:
        assert [v.id for v in repo.log("m")] == [second, first]


def test_open_hdf5_refuses_fifo_symlink_and_device_in_one_line(tmp_path, store):
    path, first, _ = store
    real = path / "objects" / first[:2] / f"{first}.h5"
    with open_hdf5(real) as f:
        assert "meta" in f
    fifo = tmp_path / "f.h5"
    os.mkfifo(fifo)
    link = tmp_path / "l.h5"
    link.symlink_to(real)
    for bad, what in ((fifo, "a FIFO"), (link, "a symbolic link"), ("/dev/zero", "a device")):
        with pytest.raises(UnsafeFileError) as err:
            open_hdf5(bad)
        assert isinstance(err.value, IntegrityError)  # handled as any damaged snapshot by scans
        assert f"is {what}, refused" in str(err.value) and "\n" not in str(err.value)
