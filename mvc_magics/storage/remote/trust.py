"""Who may move a protected tag on a remote, where the store's own permissions cannot say it.

An object store grants rights per bucket or key prefix; the log (log.py) holds every tag in
segments any member writes, so "only the release role may move ``production``" cannot be a store
permission. It is a signature instead: the remote holds ``allowed_signers.json`` (written by whoever
administers the bucket; members' store rights do not cover it), a push signs each entry of a
protected tag with the pusher's key (``MVC_SIGNING_KEY_FILE``, Ed25519), and readers apply such an
entry only when an allowed signer signed it (state.py).

``allowed_signers.json``: ``{"signers": [{"name": "release-ci", "public_key": "<PEM>"}]}``.
A tag signature is ``<key id>:<hex>`` over :func:`tag_message`: the remote's identity, the tag, the
version id (or ``deleted``), the protected flag and the hash of the tag's previous entry, so a
signature is valid for one position of one tag on one remote only (a replayed one names another
predecessor). Entries of segments written before the log was a hash chain were signed over
``tag:<model>/<tag>:<version id>`` (:func:`legacy_tag_message`). A checkpoint signature covers the
identity, the checkpoint's position, the hash of the segment it follows and the digest of its
state (:func:`checkpoint_message`). All messages get the signer's version-signature prefix; a
version id is 64 hex digits, so no message can be taken for a version signature.
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


def legacy_tag_message(model: str, tag: str, version_id: str) -> str:
    """What a tag signature covered before the log was a hash chain (replayable: read-only support)."""
    return f"tag:{model}/{tag}:{version_id}"


def tag_message(identity: str, model: str, tag: str, version_id: str | None, protected: bool,
                prev: str | None) -> str:
    """What a tag entry's signature covers: one position of one tag on one remote."""
    return (f"mvc-tag-v2:{identity}:{model}/{tag}:{version_id or 'deleted'}:"
            f"{'protected' if protected else 'unprotected'}:{prev or 'first'}")


def checkpoint_message(identity: str, seq: int, last: str, state_digest: str) -> str:
    """What a checkpoint's signature covers: the remote, the position, the segment it follows, its state."""
    return f"mvc-checkpoint-v1:{identity}:{seq}:{last}:{state_digest}"


def sign(signer: Signer, message: str) -> str:
    """``<key id>:<hex>``: the form tag and checkpoint signatures take in the log."""
    return f"{signer.key_id}:{signer.sign(message)}"


@dataclass
class AllowedSigners:
    """The remote's allowed signers: key id -> (name, public-key Signer)."""

    signers: dict[str, tuple[str, Signer]]

    def signer_of(self, message: str, signature: object) -> str | None:
        """The name of the allowed signer whose ``<key id>:<hex>`` signature of ``message`` this is, or None."""
        if not isinstance(signature, str) or ":" not in signature or len(signature) > 300:
            return None
        key_id, _, value = signature.partition(":")
        entry = self.signers.get(key_id)
        if entry is None or not entry[1].valid(message, value):
            return None
        return entry[0]

    def name_of(self, key_id: object) -> str | None:
        entry = self.signers.get(key_id) if isinstance(key_id, str) else None
        return entry[0] if entry else None

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
    data = read_allowed_signers_bytes(remote)
    return None if data is None else parse_allowed_signers(data)


def read_allowed_signers_bytes(remote: RemoteStore) -> bytes | None:
    """The raw ``allowed_signers.json`` (None when absent), bounded."""
    try:
        data = remote.read_bytes(remote.key(ALLOWED_SIGNERS), cap=MAX_SIGNERS_BYTES + 1)
    except FileNotFoundError:
        return None
    if len(data) > MAX_SIGNERS_BYTES:
        raise RemoteError(f"remote {remote.url}: {ALLOWED_SIGNERS} is larger than {MAX_SIGNERS_BYTES} bytes")
    return data


def allowed_signers_file(entries: list[tuple[str, bytes]]) -> bytes:
    """The content of ``allowed_signers.json`` for (name, public key PEM) pairs; each key is checked."""
    signers = []
    for name, pem in entries:
        Signer.ed25519_from_pem(pem)  # refuse anything that is not an Ed25519 key
        signers.append({"name": name, "public_key": pem.decode()})
    return (json.dumps({"signers": signers}, indent=1) + "\n").encode()
