"""Arithmetic on a tensor's raw bytes read as little-endian words: the deltas' differences and predictions.

Every function takes and returns flat uint8 buffers; words of ``itemsize`` bytes wrap modulo
2^bits, so a delta decodes to exactly the bytes it was made from, whatever they mean as floats.
"""

from __future__ import annotations

import numpy as np

_WORDS = {1: (np.uint8, np.int8), 2: (np.uint16, np.int16), 4: (np.uint32, np.int32), 8: (np.uint64, np.int64)}
WORD_SIZES = frozenset(_WORDS)
SLOPE_ONE = 4  # a second-order prediction's slope, in quarters: 1, the slope of 2 * base - second


def xor_bytes(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``a XOR b`` of two equal-length uint8 buffers, 8 bytes at a time where the length allows."""
    out = np.empty_like(a) if out is None else out
    wide = (a.nbytes // 8) * 8
    np.bitwise_xor(a[:wide].view(np.uint64), b[:wide].view(np.uint64), out=out[:wide].view(np.uint64))
    np.bitwise_xor(a[wide:], b[wide:], out=out[wide:])
    return out


def sub_bytes(a: np.ndarray, b: np.ndarray, itemsize: int) -> np.ndarray:
    """``zigzag(a - b)`` of two equal-length uint8 buffers read as little-endian words of
    ``itemsize`` bytes (wrapping): small differences of either sign become small unsigned words."""
    word, signed = _WORDS[itemsize]
    out = np.empty(a.nbytes, dtype=np.uint8)
    diff = out.view(word)
    np.subtract(a.view(word), b.view(word), out=diff)
    sign = diff.view(signed) >> (8 * itemsize - 1)  # all ones where a < b
    np.left_shift(diff, 1, out=diff)
    np.bitwise_xor(diff, sign.view(word), out=diff)
    return out


def predict(base: np.ndarray, second: np.ndarray, itemsize: int, slope: int = SLOPE_ONE) -> np.ndarray:
    """``base + ((slope * (base - second)) >> 2)`` over little-endian words of ``itemsize`` bytes
    (wrapping; the shift arithmetic), as uint8: ``2 * base - second`` for the slope of 1 (4 quarters)."""
    word, signed = _WORDS[itemsize]
    out = np.empty(base.nbytes, dtype=np.uint8)
    if slope == SLOPE_ONE:
        np.left_shift(base.view(word), 1, out=out.view(word))
        np.subtract(out.view(word), second.view(word), out=out.view(word))
        return out
    step = out.view(word)
    np.subtract(base.view(word), second.view(word), out=step)
    np.multiply(step, word(slope), out=step)
    np.right_shift(step.view(signed), 2, out=step.view(signed))
    np.add(step, base.view(word), out=step)
    return out


def add_back(out: np.ndarray, zigzag: np.ndarray, base: np.ndarray, itemsize: int) -> None:
    """``out = base + unzigzag(zigzag)`` (uint8 buffers of equal length; ``out`` may be either
    input). ``zigzag`` is consumed (used as scratch)."""
    word, _ = _WORDS[itemsize]
    z = zigzag.view(word)
    sign = np.bitwise_and(z, 1)
    np.subtract(word(0), sign, out=sign)  # 0 or all ones
    np.right_shift(z, 1, out=z)
    np.bitwise_xor(z, sign, out=z)
    np.add(z, base.view(word), out=out.view(word))
