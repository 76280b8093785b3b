"""The store's files, in folders that import downward only (checked by the import contract):

- ``remote/``    remotes over fsspec: objects, the log of refs, trust
- ``local/``     the store folder: :class:`~mvc_magics.storage.local.store.Store`, the order of every
  write (:mod:`.local.writes`), recovery of what a killed process left, the index, refs, audit log
- ``snapshots/`` HDF5 snapshot files: read as untrusted, written, delta bases, repacking
- ``codec/``     byte planes + zstd and delta codings
- ``files/``     atomic writes, the safe open, checksums, HDF5 attribute values, fault messages
"""
