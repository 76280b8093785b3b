"""How a tensor's bytes are coded on disk: byte planes + zstd and the delta codings (``coding``),
and a coded tensor's chain decoded from a read-only map of its file (``tensor_decode``)."""
