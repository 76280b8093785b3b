"""Pure logic with no file I/O: the ref grammar, hashing and version ids, names, metric and metadata
validation, compare and merge math, provenance, and the result objects every layer returns.

Everything above may import it; it imports only :mod:`mvc_magics.errors` and the version number.
"""
