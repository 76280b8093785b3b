"""Lossless tensor coding: byte planes + zstd, optionally as an XOR delta against a base tensor.

Coding works on a tensor's raw little-endian bytes, whatever its logical dtype (float32, bfloat16
stored as raw bits, int4...): ``itemsize`` is the number of planes. Plane ``i`` holds byte ``i``
of every element (plane 0 = the least significant byte; for floats the last plane holds the sign
and the high exponent bits, which is where the redundancy is). Each plane is one zstd frame, or
stored raw when zstd would not save on it (the low mantissa bytes of trained floats are noise).
A delta codes ``raw XOR base_raw`` the same way; decoding XORs the base back.

The layout of the coded bytes (documented in docs/FORMAT.md for plain h5py + zstandard readers) is
the planes in order, each ``length`` bytes long, described by a ``(itemsize, 2)`` table of
``[method, length]`` with method 0 = raw, 1 = zstd frame. Decoding treats every table and frame
as untrusted: sizes are checked before anything is allocated.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import zstandard

from ...core.threads import thread_pool
from ...errors import IntegrityError
from .words import SLOPE_ONE, WORD_SIZES, add_back, predict, sub_bytes, xor_bytes

CODING_PLANES = "planes+zstd"
CODING_DELTA = "xor+planes+zstd"
# An integer-difference delta: zigzag(a - b) over little-endian unsigned words of the tensor's
# itemsize. For two nearby floats of the same sign and exponent the difference sits in the low
# bytes and the high planes become zeros, where XOR turns a mantissa carry (0x7FFF -> 0x8000) into
# a run of flipped bits: on 10 Adam epochs it codes to 0.649 (dense) / 0.663 (ResNet50) of raw
# against XOR's 0.678 / 0.691. Written for itemsizes 1, 2, 4 and 8; other itemsizes use XOR.
CODING_SUB = "sub+planes+zstd"
# A second-order delta: zigzag(a - (2b - g)) in the same words, where b is the base and g the base's
# own base (the next version but one). Training with momentum moves a weight by about the same step
# from one epoch to the next, so the extrapolated 2b - g is closer to a than b is: on real Adam
# epochs this codes 9% smaller than the plain difference (0.58 of raw against 0.64).
CODING_SUB2 = "sub2+planes+zstd"
# A second-order delta with a measured slope: zigzag(a - p) with p = b + ((s * (b - g)) >> 2) in the
# same words (wrapping; the shift arithmetic, on the signed words), s the slope in quarters (the
# dataset's ``mvc_slope``; 4 is exactly CODING_SUB2, which is written then). Going back in time an
# Adam step is larger than the one after it (momentum decays where gradients fade), so a slope
# above 1 predicts better: on the benchmark's 10 Adam epochs the packed store goes from 0.665 to
# 0.647 of raw. The packer picks the slope per tensor by coding a sample with each candidate.
CODING_LIN = "lin+planes+zstd"
SLOPES = range(1, 17)  # what a reader accepts (0.25 to 4)
SLOPE_CANDIDATES = (4, 5, 6)  # what a packer tries for a reverse delta (against the child)
# A forward delta (against the parent, the packer's first versions after a keyframe) predicts a step
# from the larger one before it, so slopes below 1: on the benchmark's Adam epochs the three
# second-order forward deltas after the root code to 0.613 of raw on average, 0.640 with 4 to 6.
FORWARD_SLOPES = (2, 3, 4)
SECOND_ORDER = frozenset({CODING_SUB2, CODING_LIN})
DELTA_CODINGS = frozenset({CODING_DELTA, CODING_SUB, CODING_SUB2, CODING_LIN})
CODINGS = frozenset({CODING_PLANES, CODING_DELTA, CODING_SUB, CODING_SUB2, CODING_LIN})
RAW, ZSTD = 0, 1
# Below this a tensor is stored as it is: the attributes of a coded dataset cost more than it saves.
MIN_CODED_BYTES = 4096
# A plane whose sample compresses to more than this fraction of itself is stored raw (zstd's time
# would buy under ~3%); a tensor whose coded form is not below this fraction of raw stays raw.
PLANE_KEEP_RATIO = 0.97
TENSOR_KEEP_RATIO = 0.97
_SAMPLE = 1 << 16
ZSTD_LEVEL = 1
# Decoding runs over several threads for tensors at least this large (zstd releases the GIL).
_PARALLEL_BYTES = 1 << 20


ALIGNMENT = 64


def aligned_empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on a 64-byte boundary, so a
    framework (TensorFlow through DLPack) can adopt it without copying it again to align it.
    """
    return aligned_within(np.empty(array_nbytes(shape, dtype) + ALIGNMENT, dtype=np.uint8), shape, dtype)


def array_nbytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    """Bytes of a ``dtype`` array of ``shape``."""
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def aligned_within(buffer: np.ndarray, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """The ``dtype`` array of ``shape`` starting at the first 64-byte boundary of the uint8
    ``buffer`` (at least ``ALIGNMENT`` bytes longer than the array): a view of it."""
    offset = (-buffer.ctypes.data) % ALIGNMENT
    return buffer[offset:offset + array_nbytes(shape, dtype)].view(dtype).reshape(shape)


@dataclass(frozen=True)
class Coded:
    """The coded bytes of one tensor, their plane table and the coding (a ``CODINGS`` name)."""

    data: np.ndarray  # 1-D uint8
    planes: np.ndarray  # (itemsize, 2) int64: [method, length] per plane
    coding: str = CODING_PLANES
    slope: int = SLOPE_ONE  # CODING_LIN: the prediction's slope, in quarters

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)


def _pool() -> ThreadPoolExecutor:
    return thread_pool("code", max(2, min(4, os.cpu_count() or 1)))


def raw_bytes(array: np.ndarray) -> np.ndarray:
    """The tensor's bytes as a flat uint8 view (``array`` must be C-contiguous, little-endian)."""
    return array.reshape(-1).view(np.uint8)


def delta_coding(itemsize: int) -> str:
    """The delta a tensor of ``itemsize`` bytes per element is written as."""
    return CODING_SUB if itemsize in WORD_SIZES else CODING_DELTA


def _apply_delta(out: np.ndarray, delta: np.ndarray, base: np.ndarray, coding: str, itemsize: int) -> None:
    if coding == CODING_SUB:
        add_back(out, delta, base, itemsize)
    else:
        xor_bytes(delta, base, out=out)


def _code_plane(column: np.ndarray) -> tuple[int, bytes | np.ndarray]:
    """(method, body) of one plane, given as a (possibly strided) view: a plane that stays raw is
    returned as that view and copied once, into the coded bytes, never gathered first."""
    compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True)
    if column.nbytes > 4 * _SAMPLE:  # a sample decides for big planes: noise costs no full zstd pass
        middle = column.shape[0] // 2
        sample = compressor.compress(np.ascontiguousarray(column[middle:middle + _SAMPLE]))
        if len(sample) > PLANE_KEEP_RATIO * _SAMPLE:
            return RAW, column
    plane = np.ascontiguousarray(column)
    frame = compressor.compress(plane)
    return (ZSTD, frame) if len(frame) < PLANE_KEEP_RATIO * plane.nbytes else (RAW, plane)


def _sample_cost(source: np.ndarray, itemsize: int) -> int:
    """Bytes the compressible planes of ``source`` (a sample) code to: what a choice compares."""
    rows = source.reshape(-1, itemsize)
    compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    return sum(min(len(compressor.compress(np.ascontiguousarray(rows[:, i]))), rows.shape[0])
               for i in range(itemsize))


def choose_slope(raw: np.ndarray, base: np.ndarray, second: np.ndarray, itemsize: int,
                 candidates: tuple[int, ...] = SLOPE_CANDIDATES) -> int:
    """The slope (quarters) among ``candidates`` whose second-order delta codes a sample of the
    tensor (up to ``_SAMPLE`` elements from its middle) smallest."""
    count = raw.nbytes // itemsize
    start = max(0, count // 2 - _SAMPLE // 2) * itemsize
    window = slice(start, start + min(count, _SAMPLE) * itemsize)
    a, b, g = raw[window], base[window], second[window]
    costs = {s: _sample_cost(sub_bytes(a, predict(b, g, itemsize, s), itemsize), itemsize) for s in candidates}
    return min(candidates, key=lambda s: (costs[s], s != SLOPE_ONE))


def encode(raw: np.ndarray, itemsize: int, base: np.ndarray | None = None, delta: str | None = None,
           second: np.ndarray | None = None, slopes: tuple[int, ...] | None = None) -> Coded | None:
    """Code ``raw`` (flat uint8, ``itemsize`` bytes per element), as a delta against ``base`` when
    given (``delta``: ``CODING_SUB`` or ``CODING_DELTA``, by default :func:`delta_coding`; with
    ``second``, the base's own base, a second-order delta: ``CODING_SUB2``, or ``CODING_LIN`` with
    the slope among ``slopes`` that codes a sample smallest); None when coding would not save (the
    tensor is then stored raw)."""
    nbytes = raw.nbytes
    if nbytes < MIN_CODED_BYTES or itemsize < 1 or nbytes % itemsize:
        return None
    kind = CODING_PLANES if base is None else (delta or delta_coding(itemsize))
    slope = SLOPE_ONE
    if kind == CODING_SUB and second is not None:
        if slopes and len(slopes) > 1:
            slope = choose_slope(raw, base, second, itemsize, slopes)
        elif slopes:
            slope = slopes[0]
        kind = CODING_SUB2 if slope == SLOPE_ONE else CODING_LIN
        source = sub_bytes(raw, predict(base, second, itemsize, slope), itemsize)
    elif kind == CODING_SUB:
        source = sub_bytes(raw, base, itemsize)
    else:
        source = xor_bytes(raw, base) if base is not None else raw
    rows = source.reshape(-1, itemsize)
    planes = [rows[:, i] for i in range(itemsize)]
    if nbytes >= _PARALLEL_BYTES and itemsize > 1:
        coded = list(_pool().map(_code_plane, planes))
    else:
        coded = [_code_plane(p) for p in planes]
    table = np.array([[method, len(body) if method == ZSTD else body.shape[0]] for method, body in coded],
                     dtype=np.int64)
    total = int(table[:, 1].sum())
    if base is None and (total >= TENSOR_KEEP_RATIO * nbytes or all(m == RAW for m, _ in coded)):
        return None
    data = np.empty(total, dtype=np.uint8)
    offset = 0
    for (method, body), length in zip(coded, table[:, 1]):
        data[offset:offset + length] = np.frombuffer(body, dtype=np.uint8) if method == ZSTD else body
        offset += int(length)
    return Coded(data, table, kind, slope)


def check_table(planes: np.ndarray, itemsize: int, stored: int, nbytes: int) -> np.ndarray:
    """The plane table, validated against the stored and the decoded sizes (untrusted input)."""
    table = np.asarray(planes)
    if table.shape != (itemsize, 2) or table.dtype.kind not in "iu":
        raise IntegrityError("coded tensor: malformed plane table")
    table = table.astype(np.int64)
    if itemsize < 1 or nbytes % itemsize or (table[:, 1] < 0).any() or int(table[:, 1].sum()) != stored:
        raise IntegrityError("coded tensor: plane table does not match the stored bytes")
    plane_len = nbytes // itemsize
    for method, length in table:
        if method not in (RAW, ZSTD) or (method == RAW and length != plane_len):
            raise IntegrityError("coded tensor: plane table does not match the tensor's size")
    return table


def _decode_plane(body: np.ndarray, method: int, plane_len: int) -> np.ndarray | bytes:
    if method == RAW:
        return body
    frame = body  # zstd reads the buffer in place (a view of the file's map): no copy
    try:
        size = zstandard.frame_content_size(frame)
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"coded tensor: damaged zstd frame ({exc})") from exc
    if size != plane_len:  # checked before decompressing: a frame never allocates beyond the tensor
        raise IntegrityError("coded tensor: a zstd frame's size does not match the tensor")
    try:
        plain = zstandard.ZstdDecompressor().decompress(frame)
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"coded tensor: damaged zstd frame ({exc})") from exc
    if len(plain) != plane_len:
        raise IntegrityError("coded tensor: a zstd frame decoded to the wrong size")
    return plain


def decode_into(out: np.ndarray, data: np.ndarray, table: np.ndarray, base: np.ndarray | None = None,
                coding: str = CODING_DELTA, second: np.ndarray | None = None, slope: int = SLOPE_ONE) -> None:
    """Decode ``data`` (validated ``table``) into ``out`` (flat uint8 of the decoded size); for a
    delta (``coding``), apply it to ``base`` (flat uint8, same size; a second-order delta also
    needs ``second``, the base's own base, and ``slope`` for ``CODING_LIN``)."""
    levels: list[Level] = [(data, table, CODING_PLANES if base is None else coding, slope)]
    if base is not None and second is not None:  # the base's level as a delta whose decoded value is `base`
        levels += [(sub_bytes(base, second, table.shape[0]), None, CODING_SUB, SLOPE_ONE),
                   (second, None, None, SLOPE_ONE)]
    elif base is not None:
        levels.append((base, None, None, SLOPE_ONE))
    decode_chain(out, levels, table.shape[0])


# (data, plane table or None for bytes as they are, coding or None, slope of a CODING_LIN level)
Level = tuple[np.ndarray, "np.ndarray | None", "str | None", int]
# Elements decoded per step: one step of every level of a chain stays in the CPU cache, so a chain
# costs one pass over memory for the result instead of a few per level.
_CHUNK = 1 << 15


def _chain_planes(levels: list[Level], plane_len: int, run: Callable) -> list[list[np.ndarray] | np.ndarray]:
    """The planes of every level (raw planes are views of the level's data; the zstd frames of all
    levels decoded together through ``run``, so a chain keeps both cores busy), or a level's data
    itself for a tensor stored whole."""
    jobs = []  # (level, body, method)
    for k, (data, table, *_) in enumerate(levels):
        offset = 0
        for method, length in table if table is not None else ():
            jobs.append((k, data[offset:offset + int(length)], int(method)))
            offset += int(length)
    decoded = run(lambda job: _decode_plane(job[1], job[2], plane_len), jobs)
    planes: list[list[np.ndarray] | np.ndarray] = [data if table is None else [] for data, table, *_ in levels]
    for (k, _, _), plane in zip(jobs, decoded):
        planes[k].append(np.frombuffer(plane, np.uint8) if isinstance(plane, bytes) else plane)
    return planes


def _fill(target: np.ndarray, planes: list[np.ndarray] | np.ndarray, start: int, stop: int, itemsize: int) -> None:
    """Elements ``start:stop`` of one level, interleaved into ``target`` (flat uint8)."""
    if isinstance(planes, np.ndarray):  # stored whole
        np.copyto(target, planes[start * itemsize:stop * itemsize])
    elif itemsize == 1:
        np.copyto(target, planes[0][start:stop])
    else:
        rows = target.reshape(-1, itemsize)
        for i, plane in enumerate(planes):
            rows[:, i] = plane[start:stop]


def _halves(plane_len: int, parallel: bool, span: Callable[[int, int], None]) -> None:
    """Run ``span`` over elements ``0:plane_len``: in two halves at once when ``parallel`` (the
    second on a coding thread; zstd and numpy release the GIL)."""
    if not parallel:
        span(0, plane_len)
        return
    middle = (plane_len // 2 // _CHUNK) * _CHUNK or plane_len
    other = _pool().submit(span, middle, plane_len)
    span(0, middle)
    other.result()


def _apply_level(out: np.ndarray, prev: np.ndarray | None, planes: list[np.ndarray], kind: str, slope: int,
                 itemsize: int, first: int, last: int) -> None:
    """Elements ``first:last`` of ``out`` (the level below's value) become this delta level's value,
    a cache-sized step at a time; ``prev`` (when kept) takes the value below, for a second-order delta above."""
    scratch = np.empty(min(_CHUNK, max(last - first, 0)) * itemsize, dtype=np.uint8)
    for start in range(first, last, _CHUNK):
        stop = min(start + _CHUNK, last)
        lo, hi = start * itemsize, stop * itemsize
        delta = scratch[:hi - lo]
        _fill(delta, planes, start, stop, itemsize)
        value = out[lo:hi]
        if kind in SECOND_ORDER:
            assert prev is not None
            guess = predict(value, prev[lo:hi], itemsize, slope)
            np.copyto(prev[lo:hi], value)
            add_back(value, delta, guess, itemsize)
        else:
            if prev is not None:
                np.copyto(prev[lo:hi], value)
            _apply_delta(value, delta, value, kind, itemsize)


def decode_chain(out: np.ndarray, levels: list[Level], itemsize: int,
                 check: Callable[[int, np.ndarray], None] | None = None) -> None:
    """Decode a chain into ``out`` (flat uint8): ``levels`` from the tensor down to the tensor
    stored whole, each ``(data, table, coding)`` (``table`` None: raw bytes, which may be ``out``
    itself). Level by level from the bottom, in ``out``: memory is the result, one level's planes
    and (for second-order deltas) the value below, whatever the chain's length; ``check(i, out)``
    is called once ``out`` holds level ``i``'s value (every level but the top, which the caller
    checks), so a damaged base is refused before anything is built on it.

    Invariant (issue 23 §4): never decode the planes of more than one level at a time, and check
    each intermediate level before the next is applied."""
    levels = [level if len(level) > 3 else (*level, SLOPE_ONE) for level in levels]  # type: ignore[misc]
    if levels[-1][2] in DELTA_CODINGS or any(level[2] not in DELTA_CODINGS for level in levels[:-1]):
        raise IntegrityError("coded tensor: a delta chain that does not end on a tensor stored whole")
    if any(level[2] in SECOND_ORDER for level in levels[-2:]):  # it needs two levels below it
        raise IntegrityError("coded tensor: a second-order delta directly on a tensor stored whole")
    plane_len = out.nbytes // itemsize
    parallel = out.nbytes >= _PARALLEL_BYTES
    run = _pool().map if parallel and itemsize > 1 else map
    data, table, *_ = levels[-1]
    if table is None:
        if not np.shares_memory(data, out):
            np.copyto(out, data)
    else:
        bottom = _chain_planes([levels[-1]], plane_len, run)[0]
        _halves(plane_len, parallel, lambda a, b: _fill(out[a * itemsize:b * itemsize], bottom, a, b, itemsize))
        del bottom
    deltas = levels[-2::-1]  # bottom up
    prev = np.empty_like(out) if any(level[2] in SECOND_ORDER for level in deltas) else None
    for k, level in enumerate(deltas):
        if check is not None:
            check(len(levels) - 1 - k, out)
        planes = _chain_planes([level], plane_len, run)[0]
        _halves(plane_len, parallel,
                lambda a, b, p=planes, kind=level[2], s=level[3]: _apply_level(out, prev, p, kind, s, itemsize, a, b))
        del planes
