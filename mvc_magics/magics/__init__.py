"""The IPython layer: thin magics over :class:`mvc_magics.Repo`.

Registration happens only in :func:`load`; :func:`unload` removes every magic and hook added.
"""

from __future__ import annotations

from typing import Any

from .audit import AuditMagics
from .compare import CompareMagics
from .core import MVCMagics
from .session import MVCSession

# Each entry is a Magics class whose constructor takes (shell, session).
MAGIC_CLASSES: list[type] = [MVCMagics]
MAGIC_CLASSES.append(AuditMagics)
MAGIC_CLASSES.append(CompareMagics)

_STATE_ATTR = "_mvc_magics_state"


def load(shell: Any) -> None:
    """Register the magics on ``shell`` (a second load is a no-op, so nothing is doubled)."""
    if getattr(shell, _STATE_ATTR, None) is not None:
        return
    session = MVCSession(shell)
    instances = [cls(shell, session) for cls in MAGIC_CLASSES]
    for instance in instances:
        shell.register_magics(instance)  # Magics.__init__ already joined shell.configurables
    setattr(shell, _STATE_ATTR, {"session": session, "instances": instances, "hooks": []})


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
