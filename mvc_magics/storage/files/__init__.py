"""File primitives every store file goes through: atomic writes (temporary, fsync, rename), the safe
open of fixed-name files (no links, regular files, size caps), the whole-file checksum, HDF5
attribute values, and disk-full/permission faults as one-line errors."""
