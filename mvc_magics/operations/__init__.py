"""One module per command (commit, checkout, tags, compare, merge, push, pull, verify, removal,
export...): plain functions of a :class:`~mvc_magics.storage.local.store.Store` and their arguments.

Operations decide *what* happens; the storage layer decides the order in which files change. They
never import ``Repo``: the API binds them to a store.
"""
