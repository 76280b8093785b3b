"""A reader of an mvc store written from docs/FORMAT.md alone: h5py, numpy, zstandard and blake3,
nothing of mvc_magics. ``read_store`` checks every object file, reads every tensor of every version
(re-hashed) and recomputes every version id; it also says which kinds of file and dataset it met."""

from __future__ import annotations

import json
from pathlib import Path

import blake3
import h5py
import numpy as np
import zstandard

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
CHECKSUM_PREFIX = b"mvc-checksum blake3 "
BLOCKS_PREFIX = b"mvc-checksum b3list "
BLOCK = 1 << 20


def canonical(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def text(value):
    return value.decode() if isinstance(value, bytes) else value


class Reader:
    def __init__(self, store: Path) -> None:
        self.store = Path(store)
        self.seen: set[str] = set()  # kinds of file and dataset met

    def path(self, object_id: str) -> Path:
        return self.store / "objects" / object_id[:2] / f"{object_id}.h5"

    def check_file(self, path: Path) -> bool:
        """The checksum line holds (True), or the file is a retired file (False); else refused."""
        data = path.read_bytes()
        if data.startswith(CHECKSUM_PREFIX):
            assert data[84:85] == b"\n", path
            assert blake3.blake3(data[85:]).hexdigest() == data[20:84].decode(), f"checksum of {path}"
            return True
        if data.startswith(BLOCKS_PREFIX):
            assert data[84:85] == b"\n", path
            starts = [85, *range(BLOCK, len(data), BLOCK)]
            listed = b"".join(blake3.blake3(data[a:min(a - a % BLOCK + BLOCK, len(data))]).digest() for a in starts)
            assert blake3.blake3(listed).hexdigest() == data[20:84].decode(), f"block-list checksum of {path}"
            self.seen.add("block-list checksum")
            return True
        assert data.startswith(HDF5_SIGNATURE), f"{path}: neither a checksum line nor HDF5"
        with h5py.File(path, "r") as f:
            assert bool(f.attrs.get("mvc_retired")), f"{path}: no checksum line and not retired"
        self.seen.add("retired file")
        return False

    def decoded(self, object_id: str, digest: str) -> bytes:
        """The decoded bytes of tensor ``digest`` held by ``object_id``'s file."""
        path = self.path(object_id)
        if path.read_bytes()[:len(HDF5_SIGNATURE)] == HDF5_SIGNATURE:
            self.seen.add("tensor read from a retired file")
        with h5py.File(path, "r") as f:
            dataset = f["tensors"][digest]
            attrs = {k: text(v) for k, v in dataset.attrs.items()}
            data = np.ascontiguousarray(dataset[()])
        if "mvc_coding" not in attrs:
            return data.tobytes()
        assert data.dtype == np.uint8 and data.ndim == 1
        coding = attrs["mvc_coding"]
        self.seen.add(coding)
        planes, offset = [], 0
        for method, length in np.asarray(attrs["mvc_planes"]).tolist():
            body = data[offset:offset + length].tobytes()
            planes.append(zstandard.ZstdDecompressor().decompress(body) if method == 1 else body)
            offset += length
        assert offset == data.size
        raw = np.stack([np.frombuffer(p, np.uint8) for p in planes], axis=1).reshape(-1)
        if coding == "planes+zstd":
            return raw.tobytes()
        base = np.frombuffer(self.decoded(*attrs["mvc_base"].split("/")), np.uint8)
        if coding == "xor+planes+zstd":
            return (raw ^ base).tobytes()
        word = np.dtype(f"<u{len(planes)}")
        z, b = raw.view(word), base.view(word).copy()
        if coding == "sub2+planes+zstd":
            second = np.frombuffer(self.decoded(*attrs["mvc_base2"].split("/")), np.uint8).view(word)
            b = 2 * b - second
        elif coding == "lin+planes+zstd":
            slope = int(attrs["mvc_slope"])
            assert 1 <= slope <= 16, slope
            second = np.frombuffer(self.decoded(*attrs["mvc_base2"].split("/")), np.uint8).view(word)
            step = (b - second) * word.type(slope)  # wrapping words
            b = b + (step.view(f"<i{len(planes)}") >> 2).view(word)  # arithmetic shift of the signed word
        else:
            assert coding == "sub+planes+zstd", coding
        return (b + ((z >> 1) ^ (0 - (z & 1)))).astype(word).tobytes()

    def tensor(self, entry: dict) -> bytes:
        with h5py.File(self.path(entry["object"]), "r") as f:
            dataset = f["tensors"][entry["hash"]]
            if "mvc_coding" in dataset.attrs or "mvc_dtype" in dataset.attrs:
                assert dataset.dtype == np.uint8 and dataset.ndim == 1
                self.seen.add("raw bytes" if "mvc_dtype" in dataset.attrs else "coded")
            else:
                assert dataset.dtype.name == entry["dtype"] and list(dataset.shape) == entry["shape"]
                self.seen.add("stored as it is")
        data = self.decoded(entry["object"], entry["hash"])
        assert len(data) == entry["nbytes"]
        header = f"{entry['dtype']}|{','.join(map(str, entry['shape']))}|".encode()
        assert blake3.blake3(header + data).hexdigest() == entry["hash"], entry["name"]
        return data

    def structure(self, f: h5py.File):
        if "structure" in f:  # formats 1 and 2: inside, maybe not canonical
            return json.loads(text(f["structure"][()]))
        reference = text(f.attrs.get("mvc_structure"))
        if reference is None:
            return None
        holder, digest, nbytes = reference.split("/")
        with h5py.File(self.path(holder), "r") as g:
            blob = np.ascontiguousarray(g["tensors"][digest][()]).tobytes()
        assert len(blob) == int(nbytes)
        assert blake3.blake3(f"uint8|{len(blob)}|".encode() + blob).hexdigest() == digest
        self.seen.add("structure stored once")
        return json.loads(blob)

    def version(self, version_id: str) -> tuple[dict, dict[str, bytes]]:
        """(meta, name -> decoded bytes), after recomputing the id from the file."""
        with h5py.File(self.path(version_id), "r") as f:
            self.seen.add(f"format {int(f.attrs['mvc_format_version'])}")
            assert text(f.attrs["mvc_format"]) == "mvc-snapshot" and text(f.attrs["version_id"]) == version_id
            meta, manifest = json.loads(text(f["meta"][()])), json.loads(text(f["manifest"][()]))
            structure = self.structure(f)
        tensors = {e["name"]: self.tensor(e) for e in manifest}
        listing = sorted([e["name"], e["dtype"], e["shape"], e["hash"]] for e in manifest)
        recomputed = blake3.blake3(canonical({"structure": structure, "tensors": listing}).encode()).hexdigest()
        assert recomputed == version_id, version_id
        return meta, tensors

    def read_store(self) -> dict[str, tuple[dict, dict[str, bytes]]]:
        versions = {}
        for path in sorted((self.store / "objects").glob("*/*.h5")):
            vid = path.stem
            if not self.check_file(path):
                continue  # retired: tensors only
            if (self.store / "removed" / vid[:2] / vid).exists():
                continue  # a removed version's file before gc
            versions[vid] = self.version(vid)
        return versions
