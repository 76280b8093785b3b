"""The local store folder and the order of its writes: :class:`~.store.Store` (the opened folder),
:class:`~.writes.StoreWrites` (every write, in order), crash recovery, the SQLite index, refs, the
audit log, the journal, gc's steps and version signatures."""
