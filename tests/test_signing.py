"""Tamper evidence: signed version ids (HMAC-SHA256 or Ed25519), checked by verify and checkout."""

from __future__ import annotations

import json

import numpy as np
import pytest
from IPython.core.error import UsageError
from signing_keys import pem_key_pair

from mvc_magics.errors import SignatureError
from mvc_magics.storage.local.signatures import signature_path, signer_from_env, write_signature


@pytest.fixture
def hmac_key(monkeypatch):
    monkeypatch.delenv("MVC_SIGNING_KEY_FILE", raising=False)
    monkeypatch.setenv("MVC_SIGNING_KEY", "correct horse battery staple")


def _zeroed(weights):
    return {k: np.zeros_like(v) for k, v in weights.items()}


def test_hmac_signed_commits_verify_and_check_out(repo, weights, hmac_key):
    version = repo.commit(weights, "model")
    data = json.loads(signature_path(repo.layout.signatures, version.id).read_text())
    assert data["algorithm"] == "hmac-sha256" and data["version"] == version.id
    assert repo.verify().ok
    assert repo.signature_status("latest", name="model").state == "valid"
    target = _zeroed(weights)
    repo.checkout("latest", target, name="model", require_signature=True)
    assert np.array_equal(target["dense/kernel"], weights["dense/kernel"])


def test_forged_signature_is_reported_and_refused(repo, weights, hmac_key):
    version = repo.commit(weights, "model")
    path = signature_path(repo.layout.signatures, version.id)
    data = json.loads(path.read_text())
    data["signature"] = "0" * len(data["signature"])
    path.write_text(json.dumps(data))
    report = repo.verify()
    assert [(p.version, p.tensor) for p in report.problems] == [(version.id, None)]
    assert "does not match" in report.problems[0].message
    target = _zeroed(weights)
    with pytest.raises(SignatureError, match="refused"):
        repo.checkout("latest", target, name="model", require_signature=True)
    assert not target["dense/kernel"].any()  # the live model was left as it was


def test_unsigned_versions_are_reported_once_a_key_is_set(repo, weights, monkeypatch):
    monkeypatch.delenv("MVC_SIGNING_KEY", raising=False)
    monkeypatch.delenv("MVC_SIGNING_KEY_FILE", raising=False)
    version = repo.commit(weights, "model")
    assert repo.verify().ok  # signing is off: nothing to report
    with pytest.raises(SignatureError, match="no key"):
        repo.checkout("latest", weights, name="model", require_signature=True)
    monkeypatch.setenv("MVC_SIGNING_KEY", "k")
    report = repo.verify()
    assert [(p.version, p.message) for p in report.problems] == [(version.id, "signature: not signed")]
    with pytest.raises(SignatureError, match="not signed"):
        repo.checkout("latest", weights, name="model", require_signature=True)
    assert repo.sign_versions() == [version.id]
    assert repo.verify().ok
    assert repo.audit_log(limit=1)[0].op == "sign"


def test_another_key_is_a_bad_signature(repo, weights, hmac_key, monkeypatch):
    repo.commit(weights, "model")
    monkeypatch.setenv("MVC_SIGNING_KEY", "a different secret")
    assert any("another key" in p.message for p in repo.verify().problems)


def test_ed25519_private_key_signs_public_key_checks(repo, weights, tmp_path, monkeypatch):
    monkeypatch.delenv("MVC_SIGNING_KEY", raising=False)
    private, _ = pem_key_pair(tmp_path, "trainer")
    public = tmp_path / "trainer.pub.pem"
    monkeypatch.setenv("MVC_SIGNING_KEY_FILE", str(private))
    version = repo.commit(weights, "model")
    assert json.loads(signature_path(repo.layout.signatures, version.id).read_text())["algorithm"] == "ed25519"
    monkeypatch.setenv("MVC_SIGNING_KEY_FILE", str(public))  # a reader holds only the public key
    assert repo.verify().ok
    repo.checkout("latest", weights, name="model", require_signature=True)
    with pytest.raises(SignatureError, match="public key"):
        repo.sign_versions()
    pem_key_pair(tmp_path, "stranger")
    other_public = tmp_path / "stranger.pub.pem"
    monkeypatch.setenv("MVC_SIGNING_KEY_FILE", str(other_public))
    with pytest.raises(SignatureError, match="another key"):
        repo.checkout("latest", weights, name="model", require_signature=True)


def test_signature_files_are_write_once(repo, weights, hmac_key, monkeypatch):
    version = repo.commit(weights, "model")
    path = signature_path(repo.layout.signatures, version.id)
    before = path.read_bytes()
    monkeypatch.setenv("MVC_SIGNING_KEY", "an attacker's key")
    assert write_signature(repo.layout.signatures, repo.layout.tmp, signer_from_env(), version.id) is False
    assert repo.sign_versions() == []
    assert path.read_bytes() == before


def test_bad_key_configuration_is_a_clear_error(repo, weights, tmp_path, monkeypatch):
    from mvc_magics.errors import StoreError

    monkeypatch.setenv("MVC_SIGNING_KEY", "x")
    monkeypatch.setenv("MVC_SIGNING_KEY_FILE", str(tmp_path / "k.pem"))
    with pytest.raises(StoreError, match="only one"):
        repo.commit(weights, "model")
    monkeypatch.delenv("MVC_SIGNING_KEY")
    (tmp_path / "k.pem").write_text("not a key")
    with pytest.raises(StoreError, match="PEM Ed25519"):
        repo.commit(weights, "model")
    assert repo.log() == []


def test_checkout_magic_require_signature(ip, weights, monkeypatch):
    monkeypatch.delenv("MVC_SIGNING_KEY", raising=False)
    monkeypatch.delenv("MVC_SIGNING_KEY_FILE", raising=False)
    ip.user_ns["model"] = weights
    ip.run_line_magic("mvc_commit", "model")
    monkeypatch.setenv("MVC_SIGNING_KEY", "k")
    with pytest.raises(UsageError, match="not signed"):
        ip.run_line_magic("mvc_checkout", "latest model --require-signature")
    with pytest.raises(UsageError, match="not signed"):
        ip.run_line_magic("mvc_checkout", "latest --as copy --require-signature")
    assert "copy" not in ip.user_ns
    changed = dict(weights, **{"dense/bias": np.ones(4, np.float32)})
    ip.user_ns["model"] = changed
    ip.run_line_magic("mvc_commit", "model")  # signed: a key is set now
    ip.run_line_magic("mvc_checkout", "latest --as copy --require-signature")
    assert np.array_equal(ip.user_ns["copy"]["dense/bias"], np.ones(4, np.float32))
