"""A remote whose server cannot be reached (a closed port, a host that takes no connection) reads the
same at every entry point: one ``RemoteUnreachableError`` line naming the endpoint that was tried,
from ``RemoteStore`` itself, push, pull, clone, ``mvc remote verify`` and ``rm --remote``, and one
``UsageError`` line from the magics; the local store is left as it was. The S3 client is a real
s3fs/botocore one; no server is needed, since nothing listens."""

from __future__ import annotations

import socket

import numpy as np
import pytest
from conftest import store_state
from IPython.core.error import UsageError

from mvc_magics import Repo
from mvc_magics.apps.cli import main as cli_main
from mvc_magics.errors import RemoteUnreachableError
from mvc_magics.storage.remote.clients import storage_options
from mvc_magics.storage.remote.store import RemoteStore

pytest.importorskip("s3fs", reason="s3fs is not installed")

URL = "s3://mvc-dead/team/models"


def closed_port() -> int:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now: connections are refused
    return port


@pytest.fixture
def dead_endpoint(monkeypatch) -> str:
    endpoint = f"http://127.0.0.1:{closed_port()}"
    for key, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return endpoint


def refused_line(endpoint: str) -> str:
    return f"remote {URL}: cannot connect to {endpoint} (connection refused); is the server running"


def test_check_format_on_a_closed_port_is_one_line_naming_the_endpoint(dead_endpoint):
    remote = RemoteStore(URL)
    for call in (remote.check_format, lambda: remote.check_format(create=True), remote.objects):
        with pytest.raises(RemoteUnreachableError) as exc:
            call()
        assert str(exc.value).startswith(refused_line(dead_endpoint)) and "\n" not in str(exc.value)


def test_every_entry_point_on_a_closed_port_says_the_same_and_changes_nothing(tmp_path, dead_endpoint, capsys):
    with Repo(tmp_path / "a" / ".mvc") as repo:
        vid = repo.commit({"w": np.arange(4, dtype=np.float32)}, "m").id
        repo.add_remote("origin", URL)
        before = store_state(repo.store.layout.root)
        for operation in (lambda: repo.push(progress=False), lambda: repo.pull(progress=False),
                          lambda: Repo.clone(URL, tmp_path / "b" / ".mvc")):
            with pytest.raises(RemoteUnreachableError) as exc:
                operation()
            assert str(exc.value).startswith(refused_line(dead_endpoint)) and "\n" not in str(exc.value)
        assert not (tmp_path / "b").exists() or not any((tmp_path / "b").iterdir())  # a failed clone leaves nothing
        assert store_state(repo.store.layout.root) == before
    for argv in (["remote", "verify"], ["rm", "--remote", "origin", vid[:12]]):
        with pytest.raises(SystemExit) as code:
            cli_main(["--store", str(tmp_path / "a" / ".mvc"), *argv])
        assert code.value.code == 1
        err = capsys.readouterr().err
        assert err == f"mvc: error: {refused_line(dead_endpoint)}, and is that the right endpoint?\n", argv


def test_the_magics_on_a_closed_port_raise_one_usage_line(ip, dead_endpoint):
    ip.user_ns["w"] = {"w": np.ones(3, np.float32)}
    ip.run_line_magic("mvc_commit", "w")
    ip.run_line_magic("mvc_remote", f"add origin {URL}")
    for magic in ("mvc_push", "mvc_pull"):
        with pytest.raises(UsageError) as exc:
            ip.run_line_magic(magic, "origin")
        assert str(exc.value).startswith(refused_line(dead_endpoint)) and "\n" not in str(exc.value)


def test_a_host_that_takes_no_connection_fails_on_the_connect_timeout(monkeypatch, dead_endpoint):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    queued = []
    try:
        for _ in range(4):  # fill the accept queue: further SYNs are dropped, as by a firewall
            client = socket.socket()
            client.setblocking(False)
            client.connect_ex(("127.0.0.1", port))
            queued.append(client)
        probe = socket.socket()
        probe.settimeout(0.5)
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            pytest.skip("this kernel completes connections past a full accept queue")
        probe.close()
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("MVC_REMOTE_TIMEOUT", "0.5")
        with pytest.raises(RemoteUnreachableError, match=rf"^remote {URL}: cannot connect to http://127.0.0.1:{port} "
                                                         r"\(no connection within 0.5 s\)"):
            RemoteStore(URL).check_format()
    finally:
        for client in queued:
            client.close()
        listener.close()


def test_connections_wait_less_than_answers(monkeypatch):
    """A dead host costs the connect timeout per attempt, not the (longer) wait for an answer."""
    monkeypatch.setenv("MVC_REMOTE_TIMEOUT", "30")
    config = storage_options("s3")["config_kwargs"]
    assert (config["connect_timeout"], config["read_timeout"]) == (5.0, 30.0)
    monkeypatch.setenv("MVC_REMOTE_TIMEOUT", "2")
    config = storage_options("s3")["config_kwargs"]
    assert (config["connect_timeout"], config["read_timeout"]) == (2.0, 2.0)
