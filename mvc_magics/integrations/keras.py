"""``CommitCallback``: commit versions while a Keras model trains, in notebooks and scripts.

>>> from mvc_magics.keras import CommitCallback                       # doctest: +SKIP
>>> model.fit(x, y, validation_data=(xv, yv), epochs=20,               # doctest: +SKIP
...           callbacks=[CommitCallback(name="model", save_best_only=True)])

Each commit carries that epoch's logs as metrics and ``epoch`` (1-based) as a param. Keras is
imported only when the callback class is first used, so importing this module is cheap; every
import here is absolute, so this module's name never shadows the ``keras`` package.
"""

from __future__ import annotations

import math
import os
import warnings
from concurrent.futures import Future
from typing import Any

from ..api.repo import Repo
from ..core.metadata import validate_metrics
from ..core.provenance import build_provenance, current_context, current_workspace
from ..core.refs import infer_direction
from ..core.retention import RetentionPolicy
from ..operations.commit import commit_later, hand_offs_done

__all__ = ["CommitCallback", "CommitPolicy"]  # noqa: F822 - CommitCallback is built by __getattr__


class CommitPolicy:
    """Which epochs to commit: every ``every_n_epochs``-th, and with ``save_best_only`` only those
    whose ``monitor`` value improves on the best seen so far (``mode``: min, max or auto, inferred
    from the metric name as in the ref grammar: loss, error, mse... are lower-is-better).
    """

    def __init__(self, monitor: str = "val_loss", mode: str = "auto", save_best_only: bool = False,
                 every_n_epochs: int = 1) -> None:
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"mode must be 'auto', 'min' or 'max', not {mode!r}")
        if int(every_n_epochs) < 1:
            raise ValueError(f"every_n_epochs must be at least 1, not {every_n_epochs!r}")
        self.monitor = monitor
        self.mode = infer_direction(monitor) if mode == "auto" else mode
        self.save_best_only = save_best_only
        self.every_n_epochs = int(every_n_epochs)
        self.best: float | None = None

    def improves(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.best is None:
            return True
        return value < self.best if self.mode == "min" else value > self.best

    def should_commit(self, epoch: int, logs: dict[str, float]) -> bool:
        """Decide for the 0-based ``epoch``; records the new best when it commits."""
        if (epoch + 1) % self.every_n_epochs:
            return False
        if not self.save_best_only:
            return True
        value = logs.get(self.monitor)
        if value is None:  # like Keras's ModelCheckpoint: warn, do not stop the training
            warnings.warn(
                f"CommitCallback: monitor {self.monitor!r} is not in the epoch logs "
                f"({', '.join(sorted(logs)) or 'none'}); nothing committed. Pass validation_data "
                "or another monitor", stacklevel=2)
            return False
        if not self.improves(float(value)):
            return False
        self.best = float(value)
        return True


def _build_class() -> type:
    import keras

    class CommitCallback(keras.callbacks.Callback):
        """Commit the model during ``fit``: each epoch's metrics, and ``epoch`` as a param.

        Args:
            repo: a :class:`~mvc_magics.Repo`, a store path, or None for the default store
                (``$MVC_DIR``, else ``.mvc`` in the current folder).
            name: the model name the versions are filed under (default: the Keras model's name;
                in a notebook pass the variable name so ``%mvc_log model`` finds them).
            monitor: the metric ``save_best_only`` compares (default ``val_loss``).
            mode: ``min``, ``max`` or ``auto`` (inferred from the metric name).
            save_best_only: commit only epochs that improve ``monitor``.
            every_n_epochs: consider every n-th epoch only.
            keep: a retention policy (``["best:val_loss:5", "last:3"]``) applied to the model's history
                after each commit (``Repo.gc(keep=...)``), so a long run keeps a bounded number of versions.

        ``versions`` lists what this callback committed. In a notebook with the extension loaded
        the first commit's provenance lists the cells run since the model's last commit.

        A commit does not stop training: the weights are copied and the next epoch starts while
        they are hashed, written and synced in the background (``background=False``: durable
        before the next epoch; a ``keep`` policy commits that way too, as it removes versions).
        ``versions``, the end of ``fit``, any magic and any use of the store wait for them.
        """

        def __init__(self, repo: Repo | str | os.PathLike | None = None, name: str | None = None,
                     monitor: str = "val_loss", mode: str = "auto", save_best_only: bool = False,
                     every_n_epochs: int = 1, message: str | None = None,
                     keep: list[str] | str | None = None, background: bool = True) -> None:
            super().__init__()
            self.background = background
            self.policy = CommitPolicy(monitor, mode, save_best_only, every_n_epochs)
            # A retention policy applied after each commit keeps a long run's history bounded.
            self.keep = RetentionPolicy.parse(keep) if keep else None
            self._repo = repo if isinstance(repo, Repo) else None
            self._repo_path = None if isinstance(repo, Repo) else repo
            self.name = name
            self.message = message
            self._versions: list = []
            # The model's structure, computed at the first commit of a fit and reused by the next
            # ones (a fit does not change the architecture; get_config of ResNet50 takes 35-175 ms).
            self._run_cache: dict = {}

        # Keras 2 (tf_keras) fit also takes this callback: it asks which batch hooks a callback has.
        def _implements_train_batch_hooks(self) -> bool:
            return False

        _implements_test_batch_hooks = _implements_predict_batch_hooks = _implements_train_batch_hooks

        @property
        def versions(self) -> list:
            """The versions committed so far (waits for those still being written)."""
            done = [item.result() if isinstance(item, Future) else item for item in self._versions]
            return [version for version in done if version is not None]

        def on_train_begin(self, logs: dict | None = None) -> None:
            self._run_cache = {}  # another fit: the model may have been changed since

        def on_train_end(self, logs: dict | None = None) -> None:
            self._run_cache = {}
            if self._repo is not None:
                hand_offs_done(self._repo.store)  # fit returns with every commit durable

        @property
        def repo(self) -> Repo:
            if self._repo is None:
                self._repo = Repo(self._repo_path, workspace=current_workspace())  # the notebook's HEAD
            return self._repo

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            logs = {k: v for k, v in (logs or {}).items() if isinstance(v, int | float)}
            if not self.policy.should_commit(epoch, logs):
                return
            name = self.name or self.model.name
            total = (self.params or {}).get("epochs")
            message = self.message or (f"epoch {epoch + 1}" + (f"/{total}" if total else "") + (
                f" {self.policy.monitor}={logs[self.policy.monitor]:.6g}" if self.policy.monitor in logs else ""))
            context = current_context()
            cells = context.recorder.since(name) if context else ()
            provenance = build_provenance(context.notebook() if context else None, cells,
                                          source="CommitCallback", epoch=epoch + 1)
            options = {"message": message, "metrics": validate_metrics(logs), "params": {"epoch": epoch + 1},
                       "provenance": provenance}
            if self.background and self.keep is None:
                version = commit_later(self.repo.store, self.model, name, **options, run_cache=self._run_cache)
            else:
                version = self.repo.commit(self.model, name, **options)
            self._versions.append(version)
            if self.keep is not None:
                self.repo.gc(keep=self.keep, name=name)
            if context:
                context.recorder.committed(name)

    return CommitCallback


def __getattr__(name: str) -> Any:
    # The class derives from keras.callbacks.Callback, so it is built on first use: importing
    # mvc_magics.keras does not import Keras (and TensorFlow) by itself.
    if name == "CommitCallback":
        cls = _build_class()
        globals()["CommitCallback"] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
