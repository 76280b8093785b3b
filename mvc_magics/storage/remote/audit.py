"""A whole check of a remote's log (``mvc remote verify``): every segment from 0 against the one
before it, every checkpoint against the segments it stands for, ``log/HEAD`` against the log's end,
the store's cache against the remote (a rewritten history), and every tag entry that did not count.

Readers check only what they read (from their cache or a checkpoint on); this reads everything, so
it costs one request per segment: it is the audit, not the everyday path.
"""

from __future__ import annotations

import json

from ...errors import RemoteError, RemoteHistoryError
from .log import RemoteLog
from .state import RemoteState


def audit_log(log: RemoteLog) -> tuple[RemoteState, list[str]]:
    """The state replayed from segment 0, and one line per problem found in the log."""
    log.load_signers()
    problems: list[str] = []
    try:
        log.check_cache()
    except RemoteHistoryError as exc:
        problems.append(str(exc))
    checkpoints = log.checkpoints()
    positions = {seq for _, seq in checkpoints}
    at: dict[int, tuple[str, str]] = {}
    state = RemoteState()
    while True:
        if state.seq in positions:
            at[state.seq] = (state.state_digest(), state.last)
        found = log.segment(state.seq)
        if found is None:
            break
        try:
            log.link(state, found[0])
        except RemoteHistoryError as exc:
            problems.append(str(exc))
        state.apply(found[0], found[1], log.signers)
    end = state.seq
    for name, seq in checkpoints:
        problems.extend(_checkpoint_problems(log, name, seq, end, at.get(seq)))
    head = log.head()
    for field in ("next", "checkpoint"):
        value = head.get(field)
        if isinstance(value, int) and value > end:
            problems.append(f"log/HEAD names {value} as its {field}, but the log ends at segment {end - 1}: a forged "
                            "hint (readers do not trust it)")
    problems.extend(state.refused)
    return state, problems


def _checkpoint_problems(log: RemoteLog, name: str, seq: int, end: int, replayed) -> list[str]:
    try:
        raw = log.raw(name)
        body = json.loads(raw) if raw is not None else None
    except (ValueError, RemoteError):
        body = None
    if isinstance(body, dict) and "state" not in body and "objects" in body:
        return []  # written before the hash chain: no reader uses it
    state, who = log.read_checkpoint(name, seq)
    signed = f" (signed by {who})" if who else ""
    if state is None:
        return [f"log/{name}: not a checkpoint of position {seq} (malformed); readers ignore it"]
    if seq > end:
        return [f"log/{name}: checkpoint {seq}{signed} is ahead of the log, which ends at segment {end - 1}: forged "
                "(readers ignore it)"]
    if replayed is None or replayed != (state.state_digest(), state.last):
        return [f"log/{name}: checkpoint {seq}{signed} does not match segments 0 .. {seq - 1} (a forged state, or "
                "the segments were rewritten)" + ("" if who or log.signers is None else "; readers ignore it")]
    if log.signers is not None and who is None and body is not None and "signature" in body:
        return [f"log/{name}: checkpoint {seq} carries a signature that is not an allowed signer's; readers ignore it"]
    return []
