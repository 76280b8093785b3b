"""Typed exceptions of the core.

Every error the API raises on purpose derives from :class:`MVCError`, so the magic layer can turn
expected user errors into a one-line ``UsageError`` and let real bugs show their traceback.
"""

from __future__ import annotations


class MVCError(Exception):
    """Base class of every error mvc_magics raises on purpose."""


class StoreError(MVCError):
    """The store cannot be opened or written (missing, unknown format, permissions, disk full)."""


class StoreFormatError(StoreError):
    """The store or a snapshot file has a format this version does not understand."""


class InvalidNameError(MVCError, ValueError):
    """A model, tag or remote name is not allowed (path separators, '..', control characters...)."""


class InvalidMetricError(MVCError, ValueError):
    """A metric or parameter value is not acceptable (for example not a number)."""


class UnsupportedModelError(MVCError, TypeError):
    """The object is not a model any adapter can handle, or it has no variables."""


class MissingFrameworkError(UnsupportedModelError):
    """A version's framework is not installed here; the message names the pip extra that brings it."""


# The pip extra of mvc_magics that brings each optional package (pyproject.toml's optional-dependencies):
# no framework is a dependency of the core, nor are the widgets, the remotes or the notebook runner.
EXTRA_OF_PACKAGE = {
    "keras": "keras", "tensorflow": "keras", "tf_keras": "tf_keras", "torch": "torch", "safetensors": "torch",
    "ml_dtypes": "torch", "sklearn": "sklearn", "skops": "sklearn", "lightgbm": "lightgbm", "jax": "jax",
    "jaxlib": "jax", "flax": "jax", "optax": "jax", "lightning": "lightning", "pytorch_lightning": "lightning",
    "ipywidgets": "widgets", "matplotlib": "widgets", "pandas": "widgets", "fsspec": "remote", "s3fs": "remote",
    "cryptography": "remote", "nbclient": "notebooks", "nbformat": "notebooks", "ipykernel": "notebooks",
    "mlflow": "mlflow", "dvc": "dvc", "gto": "dvc",
}


def missing_package_message(exc: ModuleNotFoundError) -> str | None:
    """One line naming the extra to install when ``exc`` is an optional package missing, else None."""
    package = (exc.name or "").split(".")[0]
    extra = EXTRA_OF_PACKAGE.get(package)
    return f'{package} is not installed here: pip install "mvc_magics[{extra}]"' if extra else None


class RefError(MVCError, LookupError):
    """A ref could not be resolved to exactly one version."""

    def __init__(self, message: str, candidates: list[str] | None = None) -> None:
        super().__init__(message)
        self.candidates = list(candidates or [])


class UnknownRefError(RefError):
    """No version matches the ref."""


class AmbiguousRefError(RefError):
    """Several versions match the ref (for example a short prefix)."""


class TagExistsError(MVCError):
    """The tag already points at another version; pass ``force=True`` to move it."""


class ProtectedRefError(MVCError):
    """The tag or version is protected; pass ``force=True`` to change it."""


class ShapeMismatchError(MVCError, ValueError):
    """The stored tensors do not fit the live model; nothing was assigned."""


class IntegrityError(MVCError):
    """Stored data does not match its hash, or a snapshot file is malformed or hostile."""


class RefusedObjectsError(IntegrityError):
    """A pull or clone refused some remote objects (each named in ``refused``: id -> one-line
    reason) and imported every other version. ``report`` is the transfer's report; ``path`` the
    clone's store when a clone raised it (kept, with what arrived)."""

    def __init__(self, message: str, refused: dict[str, str] | None = None, report: object = None,
                 path: object = None) -> None:
        super().__init__(message)
        self.refused = dict(refused or {})
        self.report = report
        self.path = path


class ResourceLimitError(MVCError):
    """Reading a tensor would take more memory than allowed (``MVC_MAX_TENSOR_BYTES``) or than is
    available; refused before anything was allocated."""


class MergeError(MVCError, ValueError):
    """A merge was asked for wrongly (unknown method, missing evaluation function); nothing was committed."""


class MergeConflictError(MergeError):
    """The inputs of a merge cannot be combined (structures, tensors, weights); nothing was committed."""


class LockTimeoutError(StoreError):
    """Another process holds the store lock for longer than the timeout."""


class SignatureError(IntegrityError):
    """A version is unsigned or its signature is not valid, and a valid one was required."""


class UnsupportedDataError(MVCError, TypeError):
    """A ``--data`` variable cannot be fingerprinted (not an array, data frame, list or tuple)."""


class RemoteError(MVCError):
    """A remote cannot be reached, read or written, or is not an mvc remote."""


class RemoteUnreachableError(RemoteError):
    """The remote's server cannot be reached: connection refused, no connection in time, unknown host.
    The message names the endpoint that was tried."""


class RefusedRemoteFileError(RemoteError):
    """One file of a remote was refused (a symbolic link, FIFO or device, a path leading outside
    the remote, more bytes than allowed): a pull goes on without it."""


class InvalidRemoteError(RemoteError, ValueError):
    """A remote name or URL is not acceptable (unknown name, credentials in the URL...)."""


class RemotePermissionError(RemoteError):
    """The remote (its store, or its allowed signers for protected tags) refused this user an action."""


class RemoteHistoryError(RemoteError):
    """A remote's log is not a valid extension of what was read before: a segment was rewritten, the
    hash chain is broken, or a signed checkpoint no longer matches it. Nothing was changed here."""


class RemoteConflictError(RemoteError):
    """A tag points at different versions here and on the remote; nothing was overwritten.

    ``conflicts`` lists ``(model, tag, local id, remote id)``. Everything else was transferred.
    """

    def __init__(self, message: str, conflicts: list[tuple[str, str, str, str]] | None = None) -> None:
        super().__init__(message)
        self.conflicts = list(conflicts or [])


class ExportError(MVCError):
    """A version cannot be exported in the requested format or to the requested path."""


class CompareError(MVCError, ValueError):
    """The versions, weights or directions given to compare or diff cannot be compared as asked."""


class UnsafeFileError(StoreError):
    """A store file is a symlink, FIFO, device or larger than its format allows; it was not opened."""


class UnsafeSnapshotError(UnsafeFileError, IntegrityError):
    """A snapshot file is a symlink, FIFO, device or socket: refused unopened, and handled like any
    other damaged snapshot (named and skipped by scans, refused by reads)."""


class InvalidPolicyError(MVCError, ValueError):
    """A retention policy (``--keep``) that cannot be parsed."""


class PublishError(MVCError):
    """A version cannot be published to the target system (MLflow, DVC) as asked; nothing was registered."""
