"""Who may move a protected tag on a remote, where the store's own permissions cannot say it.

An object store grants rights per bucket or key prefix; the log (remote_log.py) holds every tag in
segments any member writes, so "only the release role may move ``production``" cannot be a store
permission. It is a signature instead: the remote holds ``allowed_signers.json`` (written by whoever
administers the bucket; members' store rights do not cover it), a push signs each protected tag
entry with the pusher's key (``MVC_SIGNING_KEY_FILE``, Ed25519), and a pull refuses a protected tag
whose signature is not from an allowed signer.

``allowed_signers.json``: ``{"signers": [{"name": "release-ci", "public_key": "<PEM>"}]}``.
A tag signature is ``<key id>:<hex>`` over ``tag:<model>/<tag>:<version id>`` (with the signer's
version-signature prefix; a version id is 64 hex digits, so the two messages can never coincide).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...errors import MVCError, RemoteError
from ..local.signatures import Signer

if TYPE_CHECKING:
    from .store import RemoteStore

ALLOWED_SIGNERS = "allowed_signers.json"
# Tags whose names start with this are protected on every remote, whatever their flag says.
PROTECTED_PREFIX = "production"
MAX_SIGNERS_BYTES = 1 << 20


def is_protected(tag: str, flag: bool) -> bool:
    """A tag moved only by allowed signers: flagged protected, or named ``production*``."""
    return bool(flag) or tag.startswith(PROTECTED_PREFIX)


def _message(model: str, tag: str, version_id: str) -> str:
    return f"tag:{model}/{tag}:{version_id}"


def sign_tag(signer: Signer, model: str, tag: str, version_id: str) -> str:
    return f"{signer.key_id}:{signer.sign(_message(model, tag, version_id))}"


@dataclass
class AllowedSigners:
    """The remote's allowed signers: key id -> (name, public-key Signer)."""

    signers: dict[str, tuple[str, Signer]]

    def signer_of(self, model: str, tag: str, version_id: str, signature: str | None) -> str | None:
        """The name of the allowed signer who signed this tag position, or None."""
        if not isinstance(signature, str) or ":" not in signature:
            return None
        key_id, _, value = signature.partition(":")
        entry = self.signers.get(key_id)
        if entry is None or not entry[1].valid(_message(model, tag, version_id), value):
            return None
        return entry[0]

    def allows(self, signer: Signer | None) -> bool:
        return signer is not None and signer.can_sign and signer.key_id in self.signers


def parse_allowed_signers(data: bytes) -> AllowedSigners:
    """Untrusted bytes from the remote; malformed entries are skipped (they allow no one)."""
    signers: dict[str, tuple[str, Signer]] = {}
    try:
        entries = json.loads(data).get("signers", [])
    except (ValueError, AttributeError):
        entries = []
    for entry in entries if isinstance(entries, list) else []:
        try:
            signer = Signer.ed25519_from_pem(str(entry["public_key"]).encode())
            signers[signer.key_id] = (str(entry.get("name", signer.key_id))[:100], signer)
        except (KeyError, TypeError, AttributeError, MVCError):
            continue
    return AllowedSigners(signers)


def read_allowed_signers(remote: RemoteStore) -> AllowedSigners | None:
    """The remote's allowed signers, or None when it has no list (protected tags are then not checked)."""
    try:
        data = remote.read_bytes(remote.key(ALLOWED_SIGNERS))
    except FileNotFoundError:
        return None
    if len(data) > MAX_SIGNERS_BYTES:
        raise RemoteError(f"remote {remote.url}: {ALLOWED_SIGNERS} is larger than {MAX_SIGNERS_BYTES} bytes")
    return parse_allowed_signers(data)


def allowed_signers_file(entries: list[tuple[str, bytes]]) -> bytes:
    """The content of ``allowed_signers.json`` for (name, public key PEM) pairs; each key is checked."""
    signers = []
    for name, pem in entries:
        Signer.ed25519_from_pem(pem)  # refuse anything that is not an Ed25519 key
        signers.append({"name": name, "public_key": pem.decode()})
    return (json.dumps({"signers": signers}, indent=1) + "\n").encode()
