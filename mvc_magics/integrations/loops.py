"""``commit_every``: commit a model every n steps of a plain training loop (no Trainer, no fit).

>>> from mvc_magics import commit_every                                   # doctest: +SKIP
>>> with commit_every(net, 100, name="net", optimizer=opt) as run:        # doctest: +SKIP
...     for x, y in loader:
...         loss = step(x, y)             # opt.step() counts the steps (a PyTorch step hook)
...         run.log(loss=loss.item())     # metrics attached to the next commit
>>> run.versions                                                          # doctest: +SKIP

Without ``optimizer`` (JAX, scikit-learn's ``partial_fit``, or any loop) call ``run.step()`` once
per step. Each commit carries the step as a param and the latest logged metrics; leaving the
``with`` block commits the final state if it moved since the last commit. Works for every model
the store supports.

A commit does not stop training: it copies the weights and returns; hashing, writing and syncing
finish on the store's background worker (:func:`mvc_magics.operations.commit.commit_later`).
``run.versions`` waits for them; so do leaving the ``with`` block, any magic, any read or write of
the store through the same ``Repo``, and the end of the process. ``background=False`` commits
durably before ``step()`` returns, as :meth:`Repo.commit` does.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import Future
from typing import Any

from ..api.repo import Repo
from ..core.provenance import build_provenance, current_context, current_workspace
from ..core.version import Version
from ..operations.commit import commit_later, hand_offs_done

__all__ = ["CommitEvery", "commit_every"]


class CommitEvery:
    """Counts training steps and commits ``model`` every ``n_steps`` of them (see the module doc)."""

    def __init__(self, model: Any, n_steps: int, name: str, repo: Repo | str | os.PathLike | None = None,
                 optimizer: Any = None, message: str = "step {step}", background: bool = True) -> None:
        if int(n_steps) < 1:
            raise ValueError(f"n_steps must be at least 1, not {n_steps!r}")
        self.model, self.n_steps, self.name, self.message = model, int(n_steps), name, message
        self.repo = repo if isinstance(repo, Repo) else Repo(repo, workspace=current_workspace())
        self.background = background
        self.steps = 0
        self._versions: list[Version | Future] = []
        self._metrics: dict[str, float] = {}
        self._committed_at = 0
        self._hook = None
        if optimizer is not None:
            register = getattr(optimizer, "register_step_post_hook", None)
            if register is None:
                raise TypeError(f"a {type(optimizer).__name__} has no step hook: call .step() yourself")
            self._hook = register(lambda *_args, **_kwargs: self.step())

    def log(self, **metrics: float) -> None:
        """Metrics (finite numbers) attached to the next commit; later values replace earlier ones."""
        self._metrics.update({k: float(v) for k, v in metrics.items() if math.isfinite(float(v))})

    @property
    def versions(self) -> list[Version]:
        """The versions committed so far (waits for the commits still being written)."""
        done = [item.result() if isinstance(item, Future) else item for item in self._versions]
        return [version for version in done if version is not None]  # a failed one raises on the next magic

    def step(self, **metrics: float) -> Version | Future | None:
        """One training step done; commits on every ``n_steps``-th (returns the commit: a
        :class:`~concurrent.futures.Future` of the version when committing in the background)."""
        self.log(**metrics)
        self.steps += 1
        return self.commit() if self.steps % self.n_steps == 0 else None

    def commit(self) -> Version | Future:
        """Commit now: the step count as a param, the logged metrics as metrics."""
        context = current_context()
        cells = context.recorder.since(self.name) if context else ()
        provenance = build_provenance(context.notebook() if context else None, cells, source="commit_every",
                                      step=self.steps)
        options = {"message": self.message.format(step=self.steps), "metrics": dict(self._metrics),
                   "params": {"step": self.steps}, "provenance": provenance}
        if self.background:
            version = commit_later(self.repo.store, self.model, self.name, **options)
        else:
            version = self.repo.commit(self.model, self.name, **options)
        if context:
            context.recorder.committed(self.name)
        self._versions.append(version)
        self._committed_at = self.steps
        return version

    def close(self) -> None:
        """Stop counting optimizer steps (the hook is removed)."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def __enter__(self) -> CommitEvery:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.close()
        if exc_type is None and self.steps != self._committed_at:
            self.commit()  # the final state, unless the last step was just committed
        hand_offs_done(self.repo.store)  # the block ends with every commit durable


def commit_every(model: Any, n_steps: int, name: str, repo: Repo | str | os.PathLike | None = None,
                 optimizer: Any = None, message: str = "step {step}", background: bool = True) -> CommitEvery:
    """A :class:`CommitEvery` for ``model``: commit every ``n_steps`` steps of a plain loop.

    ``optimizer``: a PyTorch optimizer whose ``step()`` counts the steps; otherwise call ``.step()``.
    ``repo``: a Repo, a store path, or None for the default store beside the notebook.
    ``background``: commits finish writing while training goes on (False: durable on return).
    """
    return CommitEvery(model, n_steps, name, repo, optimizer, message, background)
