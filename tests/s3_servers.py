"""S3 servers on 127.0.0.1 for the remote tests: moto (an S3 emulation) and SeaweedFS (a real
distributed object store), each started once per session, and ``s3``: a fresh remote prefix on
either, with the credentials only in the environment. Tests taking ``s3`` run against both.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import pytest
from seaweed import BUCKET, ROLES, start_cluster

MOTO_KEY_ID = "MVCTESTKEY" + uuid.uuid4().hex[:10].upper()
MOTO_SECRET = "mvc-test-secret-" + uuid.uuid4().hex
ENV_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL",
            "AWS_SESSION_TOKEN", "AWS_PROFILE")


@dataclass
class S3Backend:
    """One S3 server: its endpoint, a bucket every test may use, and credentials per role."""

    name: str
    endpoint: str
    bucket: str
    keys: dict[str, tuple[str, str]]
    cluster: object = None  # the SeaweedCluster, for tests that kill or restart its processes

    def env(self, role: str = "admin") -> dict[str, str]:
        key, secret = self.keys[role]
        return {"AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret, "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_ENDPOINT_URL": self.endpoint}

    def new_url(self) -> str:
        return f"s3://{self.bucket}/t{uuid.uuid4().hex[:12]}/models"

    def client(self, role: str = "admin"):
        import boto3

        key, secret = self.keys[role]
        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=key,
                            aws_secret_access_key=secret, region_name="us-east-1")


@pytest.fixture(scope="session")
def moto_backend():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    keys = dict.fromkeys(ROLES, (MOTO_KEY_ID, MOTO_SECRET))  # moto does not enforce identities
    backend = S3Backend("moto", f"http://{host}:{port}", "mvc-moto", keys)
    backend.client().create_bucket(Bucket=backend.bucket)
    yield backend
    server.stop()


@pytest.fixture(scope="session")
def seaweed_backend(tmp_path_factory):
    for attempt in range(3):  # free ports are picked, then bound: another worker may take one in between
        try:
            cluster = start_cluster(tmp_path_factory.mktemp("seaweedfs"))
            break
        except (RuntimeError, OSError) as exc:
            if attempt == 2 or "not installed" in str(exc):
                pytest.skip(f"SeaweedFS cannot start here: {str(exc).splitlines()[0]}")
    yield S3Backend("seaweedfs", cluster.endpoint, BUCKET, dict(ROLES), cluster)
    cluster.stop()


def _use_env(monkeypatch, env: dict[str, str]) -> None:
    for key in ENV_KEYS:
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)


@pytest.fixture(params=["moto", "seaweedfs"])
def s3(request, monkeypatch) -> S3Backend:
    """Either S3 server, with the admin credentials in the environment (as a user would set them)."""
    backend = request.getfixturevalue("moto_backend" if request.param == "moto" else "seaweed_backend")
    _use_env(monkeypatch, backend.env())
    return backend


@pytest.fixture
def seaweed(seaweed_backend, monkeypatch) -> S3Backend:
    """SeaweedFS only (identities, node failures), admin credentials in the environment."""
    _use_env(monkeypatch, seaweed_backend.env())
    return seaweed_backend


def use_role(monkeypatch, backend: S3Backend, role: str) -> None:
    """Switch the environment's credentials to another identity of ``backend``."""
    _use_env(monkeypatch, backend.env(role))
