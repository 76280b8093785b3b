"""The IPython layer: thin magics over :class:`mvc_magics.Repo`.

Registration happens only in :func:`load`; :func:`unload` removes every magic and hook added.
"""

from __future__ import annotations

from typing import Any

from ..core.provenance import register_context
from .audit import AuditMagics
from .automation import AutomationMagics
from .capture import session_context
from .compare import CompareMagics
from .completion import install_completer
from .core import MVCMagics
from .lifecycle import LifecycleMagics
from .merge import MergeMagics
from .publish import PublishMagics
from .remote import RemoteMagics
from .session import MVCSession

# Each entry is a Magics class whose constructor takes (shell, session). A class may define
# ``event_hooks() -> [(event, callback)]`` (load registers them, unload removes them) and
# ``close()`` (called by unload).
MAGIC_CLASSES: list[type] = [MVCMagics]
MAGIC_CLASSES.append(AuditMagics)
MAGIC_CLASSES.append(CompareMagics)
MAGIC_CLASSES.append(AutomationMagics)
MAGIC_CLASSES += [RemoteMagics, LifecycleMagics]  # issue 8
MAGIC_CLASSES.append(MergeMagics)
MAGIC_CLASSES.append(PublishMagics)  # issue 26

_STATE_ATTR = "_mvc_magics_state"


def load(shell: Any) -> None:
    """Register the magics on ``shell`` (a second load is a no-op, so nothing is doubled)."""
    if getattr(shell, _STATE_ATTR, None) is not None:
        return
    session = MVCSession(shell)
    instances = [cls(shell, session) for cls in MAGIC_CLASSES]
    for instance in instances:
        shell.register_magics(instance)  # Magics.__init__ already joined shell.configurables
    state: dict[str, Any] = {"session": session, "instances": instances, "hooks": [], "cleanups": []}
    setattr(shell, _STATE_ATTR, state)
    for instance in instances:
        for event, callback in getattr(instance, "event_hooks", list)():
            shell.events.register(event, callback)
            state["hooks"].append((event, callback))
        if callable(getattr(instance, "close", None)):
            state["cleanups"].append(instance.close)
    # Cells run before %load_ext (in a kernel's history) count for the provenance of commits.
    for number, source in enumerate(getattr(shell.history_manager, "input_hist_raw", [])):
        if number:
            session.recorder.started(source, number)
    session.recorder.idle()
    state["cleanups"].append(install_completer(shell, session))
    state["cleanups"].append(register_context(session_context(session)))


def unload(shell: Any) -> None:
    """Remove every magic and event hook :func:`load` (or later magics) added."""
    state = getattr(shell, _STATE_ATTR, None)
    if state is None:
        return
    for event, callback in state["hooks"]:
        try:
            shell.events.unregister(event, callback)
        except ValueError:
            pass
    for cleanup in state.get("cleanups", []):
        cleanup()
    for instance in state["instances"]:
        for kind, names in instance.magics.items():
            for magic_name in names:
                shell.magics_manager.magics[kind].pop(magic_name, None)
        shell.magics_manager.registry.pop(type(instance).__name__, None)
        while hasattr(shell, "configurables") and instance in shell.configurables:
            shell.configurables.remove(instance)
    state["session"].close()
    setattr(shell, _STATE_ATTR, None)


def session_of(shell: Any) -> MVCSession | None:
    """The session of a loaded extension (for tests and other layers)."""
    state = getattr(shell, _STATE_ATTR, None)
    return state["session"] if state else None
