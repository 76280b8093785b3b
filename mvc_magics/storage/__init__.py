"""Storage layer: snapshot files (h5py), the SQLite index, atomic writes and the store lock."""
