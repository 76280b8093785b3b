"""The plain Python API: :class:`Repo`, a thin facade binding the operations to one store."""

from .repo import Repo, default_store_path

__all__ = ["Repo", "default_store_path"]
