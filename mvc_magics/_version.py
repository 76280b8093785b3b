"""The package version (read by the build backend and recorded with every commit)."""

__version__ = "0.1.0"
