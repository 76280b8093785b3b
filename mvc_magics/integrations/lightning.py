"""``CommitCheckpoint``: a PyTorch Lightning callback that commits the LightningModule while it trains.

>>> from mvc_magics.integrations.lightning import CommitCheckpoint                       # doctest: +SKIP
>>> trainer = L.Trainer(max_epochs=5, callbacks=[CommitCheckpoint(name="net", save_best_only=True)])

At the end of each validation (or, without validation, each training epoch) it commits the module
with the trainer's logged metrics and ``epoch``/``global_step`` as params; ``monitor``/``mode``/
``save_best_only``/``every_n_epochs`` mean what they mean for the Keras ``CommitCallback``. The class
derives from Lightning's ``Callback``, so it is built on first use: importing this module imports
neither Lightning nor PyTorch. A commit copies the weights and training goes on while the store
writes them in the background; ``versions``, the end of ``fit``, any magic and the end of the
process wait for them (``background=False``: durable before the next epoch).
"""

from __future__ import annotations

import math
import os
from concurrent.futures import Future
from typing import Any

from ..api.repo import Repo
from ..core.provenance import build_provenance, current_context, current_workspace
from ..operations.commit import commit_later, hand_offs_done
from .keras import CommitPolicy

__all__ = ["CommitCheckpoint"]  # noqa: F822 - built by __getattr__


def _metrics(trainer: Any) -> dict[str, float]:
    found = {}
    for key, value in dict(trainer.callback_metrics).items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            found[str(key)] = number
    return found


def _build_class() -> type:
    try:
        from lightning.pytorch import Callback
    except ImportError:  # the older package name
        from pytorch_lightning import Callback

    class CommitCheckpoint(Callback):
        """Commit the LightningModule during ``trainer.fit`` (see the module docstring).

        Args:
            name: the model name the versions are filed under (default: the module's class name).
            repo: a :class:`~mvc_magics.Repo`, a store path, or None for the default store.
        """

        def __init__(self, name: str | None = None, repo: Repo | str | os.PathLike | None = None,
                     monitor: str = "val_loss", mode: str = "auto", save_best_only: bool = False,
                     every_n_epochs: int = 1, background: bool = True) -> None:
            super().__init__()
            self.policy = CommitPolicy(monitor, mode, save_best_only, every_n_epochs)
            self.name, self._repo_arg = name, repo
            self._repo: Repo | None = repo if isinstance(repo, Repo) else None
            # Commits do not stop training: the weights are copied, the store writes them in the
            # background (see operations.commit.commit_later); False: durable before the next epoch.
            self.background = background
            self._versions: list = []
            self._done_epoch = -1

        @property
        def versions(self) -> list:
            """The versions committed so far (waits for those still being written)."""
            done = [item.result() if isinstance(item, Future) else item for item in self._versions]
            return [version for version in done if version is not None]

        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            if self._repo is not None:
                hand_offs_done(self._repo.store)  # fit returns with every commit durable

        @property
        def repo(self) -> Repo:
            if self._repo is None:
                self._repo = Repo(self._repo_arg, workspace=current_workspace())  # the notebook's HEAD
            return self._repo

        def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
            if not trainer.sanity_checking:
                self._maybe_commit(trainer, pl_module)

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            if not getattr(trainer, "val_dataloaders", None):  # no validation: commit per training epoch
                self._maybe_commit(trainer, pl_module)

        def _maybe_commit(self, trainer: Any, pl_module: Any) -> None:
            epoch = int(trainer.current_epoch)
            if epoch == self._done_epoch or trainer.global_rank != 0:
                return
            metrics = _metrics(trainer)
            if not self.policy.should_commit(epoch, metrics):
                return
            self._done_epoch = epoch
            name = self.name or type(pl_module).__name__
            context = current_context()
            cells = context.recorder.since(name) if context else ()
            provenance = build_provenance(context.notebook() if context else None, cells,
                                          source="CommitCheckpoint", epoch=epoch + 1)
            options = {"message": f"epoch {epoch + 1}", "metrics": metrics, "provenance": provenance,
                       "params": {"epoch": epoch + 1, "global_step": int(trainer.global_step)}}
            if self.background:
                version = commit_later(self.repo.store, pl_module, name, **options)
            else:
                version = self.repo.commit(pl_module, name, **options)
            self._versions.append(version)
            if context:
                context.recorder.committed(name)

    return CommitCheckpoint


def __getattr__(name: str) -> Any:
    if name == "CommitCheckpoint":
        cls = _build_class()
        globals()["CommitCheckpoint"] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
