"""Helpers shared by the reliability tests: loading the soak scripts, running child processes."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_script(name: str):
    """Import ``scripts/<name>.py`` (the long-run scripts double as the tests' harness)."""
    spec = importlib.util.spec_from_file_location(f"mvc_scripts_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def run_python(code: str, *args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter importing this tree."""
    return subprocess.run([sys.executable, "-c", code, *args], env=child_env(**env), capture_output=True,
                          text=True, timeout=timeout)


def tree_state(folder: Path) -> dict[str, str]:
    """Path -> content hash of every file under ``folder`` (to prove nothing was written)."""
    state = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.name.endswith(("-shm", "-wal")):
            state[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return state


def flip_tensor_byte(repo, version_id: str, digest: str, at: int, mask: int = 0x01) -> None:
    """XOR ``mask`` into byte ``at`` of the stored tensor ``digest`` of ``version_id``'s snapshot
    file, where HDF5 says its bytes are (damage the hash check must find)."""
    import h5py

    path = repo.layout.snapshot_path(version_id)
    with h5py.File(path, "r") as f:
        offset = f["tensors"][digest].id.get_offset() + at
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))
