"""Verify a remote (``mvc remote verify``): its log read whole (storage/remote/audit.py: the hash chain,
checkpoints, ``log/HEAD``, what this store read before, tag entries refused), every tag naming a
version the log holds, and the signature records of each version; and let a release signer sign a
checkpoint that anchors fresh clones."""

from __future__ import annotations

from ..errors import MVCError, RemoteError, RemotePermissionError, SignatureError
from ..storage.local.signatures import Signer, signer_from_env
from ..storage.local.store import Store
from ..storage.remote.audit import audit_log
from ..storage.remote.log import RemoteLog
from ..storage.remote.state import RemoteState
from ..storage.remote.store import RemoteStore
from ..storage.remote.trust import AllowedSigners
from .remotes import remote_errors, remote_url, state_cache


def verify_remote(store: Store, remote: str | None = None) -> list[str]:
    """One line per problem found on the remote (empty: nothing wrong); nothing is changed."""
    label, url = remote_url(store, remote)
    with remote_errors(url):
        source = RemoteStore(url)
        if not source.check_format():
            return [f"no mvc remote at {url}"]
        if source.format_version() < 2 and not RemoteLog(source).exists():
            state, problems = source.listed_state(), []
            signers = None
        else:
            log = RemoteLog(source, state_cache(store, url))
            state, problems = audit_log(log)
            signers = log.signers
        for (model, tag), (vid, _) in sorted(state.tags.items()):
            if vid not in state.objects:
                problems.append(f"tag {tag} ({model}) names {vid[:12]}, which the remote does not hold")
        problems.extend(_signature_problems(state, signers))
        return [f"{label}: {line}" for line in problems]


def _signature_problems(state: RemoteState, signers: AllowedSigners | None) -> list[str]:
    """Records that claim a known key (an allowed signer's, or this store's) but do not validate, and
    versions where such a record was pushed beside a valid one (an attempt to shadow it)."""
    keys: dict[str, tuple[str, Signer]] = dict(signers.signers) if signers is not None else {}
    try:
        own = signer_from_env()
    except MVCError:  # a broken key configuration: check with the allowed signers only
        own = None
    if own is not None:
        keys.setdefault(own.key_id, ("this store's key", own))
    problems = []
    for vid, records in sorted(state.signatures.items()):
        valid = [keys[r["key"]][0] for r in records
                 if r["key"] in keys and keys[r["key"]][1].valid(vid, r["signature"])]
        for record in records:
            name = keys[record["key"]][0] if record["key"] in keys else None
            if name is not None and name not in valid:
                problems.append(f"version {vid[:12]}: a signature record claims the key of {name} but does not "
                                "validate (forged)")
            elif name is None and valid and keys:
                problems.append(f"version {vid[:12]}: a signature record by key {record['key']} (not an allowed "
                                f"signer) was pushed beside {valid[0]}'s valid one; it shadows nothing (every record "
                                "is kept, a version is signed if one validates)")
    return problems


def sign_checkpoint(store: Store, remote: str | None = None) -> str:
    """Sign the remote's state as this store reads it (checked from its segments) as a checkpoint that
    fresh clones start from; the key (``MVC_SIGNING_KEY_FILE``) must be one of the remote's allowed signers.
    Returns the checkpoint's file name."""
    _, url = remote_url(store, remote)
    signer = signer_from_env()
    if signer is None or not signer.can_sign:
        raise SignatureError("signing a checkpoint needs a private key (MVC_SIGNING_KEY_FILE)")
    with remote_errors(url):
        target = RemoteStore(url)
        if not target.check_format():
            raise RemoteError(f"no mvc remote at {url}")
        target.require_exclusive_create()
        log = RemoteLog(target, state_cache(store, url), signer)
        state = log.read()
        if log.signers is None:
            raise RemoteError(f"remote {url} has no allowed_signers.json: a signed checkpoint would anchor nothing")
        if not log.signers.allows(signer):
            raise RemotePermissionError(f"permission denied: remote {url} lets only its allowed signers sign "
                                        f"checkpoints; key {signer.key_id} is not one")
        if state.seq == 0:
            raise RemoteError(f"remote {url}: its log is empty, nothing to sign")
        return log.write_signed_checkpoint(state, signer)
