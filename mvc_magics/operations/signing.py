"""Signatures of versions: sign them, read their state, and refuse what is not validly signed."""

from __future__ import annotations

from ..errors import SignatureError
from ..storage.local.signatures import SignatureStatus, check_signature, signer_from_env
from ..storage.local.store import Store
from . import versions


def sign_versions(store: Store) -> list[str]:
    """Sign every unsigned version with the configured key; return the ids signed."""
    signer = signer_from_env()
    if signer is None:
        raise SignatureError("no signing key: set MVC_SIGNING_KEY or MVC_SIGNING_KEY_FILE (a private key)")
    if not signer.can_sign:
        raise SignatureError("the configured key is a public key: it checks signatures but cannot sign")
    return store.writes.sign_all(signer)


def signature_status(store: Store, ref: str, name: str | None = None) -> SignatureStatus:
    """``valid``, ``unsigned``, ``bad`` or ``unchecked`` (no key configured) for version ``ref``."""
    version = versions.resolve(store, ref, name=name)
    return check_signature(store.layout.signatures, signer_from_env(), version.id)


def require_valid_signature(store: Store, vid: str) -> None:
    """Raise :class:`SignatureError` unless version ``vid`` has a valid signature."""
    signer = signer_from_env()
    if signer is None:
        raise SignatureError("a valid signature is required but no key is configured to check it "
                             "(set MVC_SIGNING_KEY or MVC_SIGNING_KEY_FILE)")
    status = check_signature(store.layout.signatures, signer, vid)
    if status.state != "valid":
        raise SignatureError(f"version {vid[:12]} refused: {status.detail}")
