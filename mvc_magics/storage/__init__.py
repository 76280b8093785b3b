"""The store's files: snapshots (HDF5), the index (SQLite), ref and note files, the audit log, the
lock, atomic writes and remote objects.

:class:`~mvc_magics.storage.store.Store` is the opened folder; :mod:`.writes` owns the order of every
write and :mod:`.recovery` finishes what a killed process left.
"""
