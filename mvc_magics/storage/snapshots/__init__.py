"""Snapshot files (HDF5): reading them as untrusted input (``snapshot``), writing them
(``snapshot_writer``, ``staging``), choosing delta bases (``deltas``), re-coding a file in place
(``repacking``) and what gc keeps of removed versions (``retired``)."""
