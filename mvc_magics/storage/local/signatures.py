"""Optional signatures of version ids: tamper evidence for stores that are copied and shared.

Turn it on with one of:

- ``MVC_SIGNING_KEY``: a secret; versions are signed with HMAC-SHA256 (anyone with the secret can
  sign and check).
- ``MVC_SIGNING_KEY_FILE``: the path of an Ed25519 key in PEM. A private key signs and checks; a
  public key only checks (give readers the public key, keep the private one with the trainer).

Each signature is a write-once file ``signatures/<ab>/<id>.json``. The signed message is
``mvc-version-signature-v1:<full version id>``: since the id is a hash of the structure and every
tensor, a valid signature vouches for the weights themselves.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ...errors import SignatureError, StoreError, UnsafeFileError
from ..files.safe_files import CAP_SIGNATURE, SafeFiles

KEY_ENV = "MVC_SIGNING_KEY"
KEY_FILE_ENV = "MVC_SIGNING_KEY_FILE"
_PREFIX = b"mvc-version-signature-v1:"


@dataclass(frozen=True)
class SignatureStatus:
    """The signature state of one version: ``valid``, ``unsigned``, ``bad`` or ``unchecked``."""

    version: str
    state: str
    detail: str = ""


class Signer:
    """Signs and checks version ids with one key (HMAC-SHA256 secret or Ed25519 key)."""

    def __init__(self, algorithm: str, key_id: str, secret: bytes | None = None,
                 private_key: object = None, public_key: object = None) -> None:
        self.algorithm = algorithm
        self.key_id = key_id
        self._secret = secret
        self._private = private_key
        self._public = public_key

    @classmethod
    def hmac_sha256(cls, secret: bytes) -> Signer:
        if not secret:
            raise StoreError(f"{KEY_ENV} is empty: give a secret, or unset it to turn signing off")
        key_id = hashlib.sha256(b"mvc-key-id:" + secret).hexdigest()[:16]
        return cls("hmac-sha256", key_id, secret=secret)

    @classmethod
    def ed25519_from_pem(cls, pem: bytes) -> Signer:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519

        private = public = None
        try:
            private = serialization.load_pem_private_key(pem, password=None)
            public = private.public_key()
        except (ValueError, TypeError):
            try:
                public = serialization.load_pem_public_key(pem)
            except (ValueError, TypeError) as exc:
                raise StoreError(f"{KEY_FILE_ENV} does not hold a PEM Ed25519 key: {exc}") from exc
        if not isinstance(public, ed25519.Ed25519PublicKey):
            raise StoreError(f"{KEY_FILE_ENV} holds a {type(public).__name__}; only Ed25519 keys are supported")
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return cls("ed25519", hashlib.sha256(raw).hexdigest()[:16], private_key=private, public_key=public)

    @property
    def can_sign(self) -> bool:
        return self._secret is not None or self._private is not None

    def sign(self, version_id: str) -> str:
        message = _PREFIX + version_id.encode()
        if self._secret is not None:
            return hmac.new(self._secret, message, hashlib.sha256).hexdigest()
        if self._private is None:
            raise SignatureError("the signing key is a public key: it can check signatures but not sign")
        return self._private.sign(message).hex()

    def valid(self, version_id: str, signature: str) -> bool:
        message = _PREFIX + version_id.encode()
        if self._secret is not None:
            return hmac.compare_digest(hmac.new(self._secret, message, hashlib.sha256).hexdigest(), signature)
        from cryptography.exceptions import InvalidSignature

        try:
            self._public.verify(bytes.fromhex(signature), message)
        except (InvalidSignature, ValueError):
            return False
        return True


def signer_from_env(environ: dict | None = None) -> Signer | None:
    """The signer configured in the environment, or None when signing is off."""
    environ = os.environ if environ is None else environ
    secret, key_file = environ.get(KEY_ENV), environ.get(KEY_FILE_ENV)
    if secret and key_file:
        raise StoreError(f"set only one of {KEY_ENV} and {KEY_FILE_ENV}")
    if secret:
        return Signer.hmac_sha256(secret.encode())
    if key_file:
        try:
            pem = Path(key_file).expanduser().read_bytes()
        except OSError as exc:
            raise StoreError(f"cannot read the signing key {key_file}: {exc.strerror or exc}") from exc
        return Signer.ed25519_from_pem(pem)
    return None


def signature_path(root: Path, version_id: str) -> Path:
    return root / version_id[:2] / f"{version_id}.json"


def write_signature(root: Path, tmp: Path, signer: Signer, version_id: str) -> bool:
    """Sign ``version_id`` into a write-once file; False when a signature file already exists."""
    if SafeFiles(Path(root).parent).exists(signature_path(root, version_id)):
        return False
    payload = {"version": version_id, "algorithm": signer.algorithm, "key": signer.key_id,
               "signature": signer.sign(version_id)}
    return _place(signature_path(root, version_id), payload)


def read_signature(root: Path, version_id: str) -> dict | None:
    """The well-formed signature record of ``version_id`` (to send to a remote), or None."""
    try:
        raw = SafeFiles(Path(root).parent).read(signature_path(root, version_id), CAP_SIGNATURE)
        payload = json.loads(raw) if raw is not None else None
    except (UnsafeFileError, OSError, ValueError):
        return None
    return payload if well_formed(payload, version_id) else None


def well_formed(payload: object, version_id: str) -> bool:
    """True when ``payload`` is a signature record of ``version_id`` in the documented shape (it
    comes from a remote: untrusted, and small by construction)."""
    if not isinstance(payload, dict) or set(payload) != {"version", "algorithm", "key", "signature"}:
        return False
    key, signature = payload.get("key"), payload.get("signature")
    return (payload.get("version") == version_id and payload.get("algorithm") in ALGORITHMS
            and isinstance(key, str) and len(key) == 16 and _is_hex(key)
            and isinstance(signature, str) and 0 < len(signature) <= 256 and _is_hex(signature))


def import_signature(root: Path, tmp: Path, version_id: str, payload: object, signer: Signer | None,
                     beside: bool = False) -> bool:
    """Keep a signature that came with a pulled version (write-once, like one made here).

    With a key configured, only a signature that key finds valid is kept: a bogus one must not take
    the place (files are write-once) of the valid signature a later pull or ``sign`` would bring.
    Without a key it is kept when well formed (``verify`` then reports it unchecked). With ``beside``
    (the remote holds several records for the version), a record the configured key finds valid is
    kept beside a first one by another key (:func:`keyed_signature_path`): a version is signed if any
    of its records validates, so a record pulled first never shadows a later valid one.
    """
    if not well_formed(payload, version_id):
        return False
    valid = signer is not None and (payload["algorithm"] == signer.algorithm and payload["key"] == signer.key_id
                                    and signer.valid(version_id, payload["signature"]))
    files = SafeFiles(Path(root).parent)
    if files.exists(signature_path(root, version_id)):
        if not (beside and valid) or files.exists(keyed_signature_path(root, version_id, signer.key_id)):
            return False
        first = read_signature(root, version_id)
        if first is not None and first["key"] == signer.key_id:
            return False
        return _place(keyed_signature_path(root, version_id, signer.key_id), dict(payload))
    if signer is not None and not valid:
        return False
    return _place(signature_path(root, version_id), dict(payload))


def keyed_signature_path(root: Path, version_id: str, key_id: str) -> Path:
    """Where a record by key ``key_id`` is kept when the first record of the version is by another key."""
    return root / version_id[:2] / f"{version_id}.{key_id}.json"


ALGORITHMS = frozenset({"hmac-sha256", "ed25519"})


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


def _place(path: Path, payload: dict) -> bool:
    # Linked, not renamed, into place: a link never replaces, so the first signature stays.
    return SafeFiles(path.parent.parent.parent).write(path, json.dumps(payload, sort_keys=True).encode(),
                                                      exclusive=True)


def check_signature(root: Path, signer: Signer | None, version_id: str) -> SignatureStatus:
    """The signature state of ``version_id`` (``unchecked`` when no key is configured): its first
    record, or the configured key's record kept beside a first one by another key."""
    return _check_file(root, signature_path(root, version_id), signer, version_id, first=True)


def _check_file(root: Path, path: Path, signer: Signer | None, version_id: str, first: bool) -> SignatureStatus:
    try:
        raw = SafeFiles(Path(root).parent).read(path, CAP_SIGNATURE)
        if raw is None:
            return SignatureStatus(version_id, "unsigned", "not signed")
        data = json.loads(raw)
    except UnsafeFileError as exc:
        return SignatureStatus(version_id, "bad", str(exc))
    except (OSError, ValueError) as exc:
        return SignatureStatus(version_id, "bad", f"unreadable signature file ({exc})")
    if not isinstance(data, dict) or data.get("version") != version_id or not isinstance(data.get("signature"), str):
        return SignatureStatus(version_id, "bad", "malformed signature file")
    if signer is None:
        return SignatureStatus(version_id, "unchecked", "signed, but no key is configured to check it")
    if data.get("algorithm") != signer.algorithm or data.get("key") != signer.key_id:
        beside = keyed_signature_path(root, version_id, signer.key_id)
        if first and SafeFiles(Path(root).parent).exists(beside):  # this key's record, kept beside the first
            return _check_file(root, beside, signer, version_id, first=False)
        return SignatureStatus(version_id, "bad", f"signed with another key ({data.get('algorithm')} "
                                                  f"{str(data.get('key'))[:16]}), not {signer.key_id}")
    if not signer.valid(version_id, data["signature"]):
        return SignatureStatus(version_id, "bad", "the signature does not match (forged or altered)")
    return SignatureStatus(version_id, "valid")
