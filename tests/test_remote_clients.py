"""One S3 client per endpoint, credentials and options in a process (storage/remote/clients.py):
``RemoteStore`` objects share it instead of paying for a new botocore client each time, yet a
listing another machine changed since is seen, another identity or server gets its own client, and
each ``RemoteStore`` counts only the requests sent since it was made."""

from __future__ import annotations

import uuid

import pytest
from s3_servers import use_role

from mvc_magics.storage.remote.store import RemoteStore

pytest.importorskip("s3fs", reason="s3fs is not installed")


def test_stores_of_one_endpoint_share_a_client_and_see_what_others_wrote(s3):
    url = s3.new_url()
    first = RemoteStore(url)
    first.check_format(create=True)
    vid = uuid.uuid4().hex * 2
    folder = first.key("objects", vid[:2])
    first.fs.makedirs(folder, exist_ok=True)
    assert first.fs.ls(first.root) == [first.key("FORMAT")]  # a listing s3fs keeps in its cache
    second = RemoteStore(url)
    assert second.fs is first.fs
    assert second.requests == 0
    # Another machine (its own client) uploads an object: a new RemoteStore must see it.
    s3.client().put_object(Bucket=s3.bucket, Key=f"{folder.split('/', 1)[1]}/{vid}.h5", Body=b"x" * 7)
    third = RemoteStore(url)
    assert third.key("objects") in third.fs.ls(third.root)
    assert third.list_objects() == {vid: 7}
    assert third.requests > 0 and second.requests >= third.requests


def test_another_identity_gets_its_own_client(seaweed, monkeypatch):
    url = seaweed.new_url()
    admin = RemoteStore(url)
    use_role(monkeypatch, seaweed, "reader")
    reader = RemoteStore(url)
    assert reader.fs is not admin.fs
    use_role(monkeypatch, seaweed, "admin")
    assert RemoteStore(url).fs is admin.fs


def test_a_server_on_another_port_gets_its_own_client(moto_backend, monkeypatch):
    from moto.server import ThreadedMotoServer

    for key, value in moto_backend.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MVC_REMOTE_TIMEOUT", "3")
    url = moto_backend.new_url()
    first = RemoteStore(url)
    first.check_format(create=True)
    other = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    other.start()  # moto servers of one process share their buckets: the remote is there too
    host, port = other.get_host_and_port()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
    try:
        elsewhere = RemoteStore(url)
        assert elsewhere.fs is not first.fs and elsewhere.check_format()
    finally:
        other.stop()
    with pytest.raises(Exception, match=f"127.0.0.1:{port}"):  # gone: its client must not fall back to another
        RemoteStore(url).check_format()
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_backend.endpoint)
    again = RemoteStore(url)
    assert again.fs is first.fs and again.check_format()


def aws_files_only(monkeypatch, tmp_path, credentials: str, config: str):
    """Credentials and endpoint in botocore's files (nothing in the environment), as a user keeps them."""
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL",
                "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    (tmp_path / "credentials").write_text(credentials)
    (tmp_path / "config").write_text(config)


def test_credentials_fixed_in_the_file_are_used_without_a_restart(seaweed, monkeypatch, tmp_path):
    from mvc_magics.errors import RemoteError

    url = seaweed.new_url()
    key, secret = seaweed.keys["admin"]
    aws_files_only(monkeypatch, tmp_path, f"[default]\naws_access_key_id = {key}\naws_secret_access_key = wrong\n",
                   f"[default]\nregion = us-east-1\nendpoint_url = {seaweed.endpoint}\n")
    with pytest.raises(RemoteError):
        RemoteStore(url).check_format(create=True)
    # The user fixes ~/.aws/credentials in the notebook and runs the cell again: same process.
    (tmp_path / "credentials").write_text(f"[default]\naws_access_key_id = {key}\naws_secret_access_key = {secret}\n")
    fixed = RemoteStore(url)
    assert fixed.check_format(create=True) and RemoteStore(url).fs is fixed.fs  # reused until the next edit


def test_an_endpoint_fixed_in_the_config_file_is_used_without_a_restart(moto_backend, monkeypatch, tmp_path):
    import socket

    from mvc_magics.errors import RemoteUnreachableError

    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    closed = probe.getsockname()[1]
    probe.close()
    url = moto_backend.new_url()
    key, secret = moto_backend.keys["admin"]
    aws_files_only(monkeypatch, tmp_path, f"[default]\naws_access_key_id = {key}\naws_secret_access_key = {secret}\n",
                   f"[default]\nregion = us-east-1\nendpoint_url = http://127.0.0.1:{closed}\n")
    with pytest.raises(RemoteUnreachableError, match=f"127.0.0.1:{closed}"):
        RemoteStore(url).check_format(create=True)
    (tmp_path / "config").write_text(f"[default]\nregion = us-east-1\nendpoint_url = {moto_backend.endpoint}\n")
    assert RemoteStore(url).check_format(create=True)
