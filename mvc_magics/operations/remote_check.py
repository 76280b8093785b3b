"""Verify a remote: every tag names a version the log holds, and every protected tag is signed by
one of the remote's allowed signers (storage/remote/trust.py)."""

from __future__ import annotations

from ..storage.local.store import Store
from ..storage.remote.store import RemoteStore
from ..storage.remote.trust import is_protected, read_allowed_signers
from .remotes import remote_errors, remote_url, state_cache


def verify_remote(store: Store, remote: str | None = None) -> list[str]:
    """One line per problem found on the remote (empty: nothing wrong); nothing is changed."""
    label, url = remote_url(store, remote)
    with remote_errors(url):
        source = RemoteStore(url)
        if not source.check_format():
            return [f"no mvc remote at {url}"]
        state = source.state(state_cache(store, url))
        signers = read_allowed_signers(source)
        problems = []
        for (model, tag), (vid, protected) in sorted(state.tags.items()):
            if vid not in state.objects:
                problems.append(f"{label}: tag {tag} ({model}) names {vid[:12]}, which the remote does not hold")
            elif is_protected(tag, protected) and signers is not None:
                who = signers.signer_of(model, tag, vid, state.tag_signatures.get((model, tag)))
                if who is None:
                    problems.append(f"{label}: protected tag {tag} ({model}) on {vid[:12]} is not signed by an "
                                    "allowed signer")
        return problems
