"""Compact integer arrays for the code prior in a model file.

A fitted prior is stored as what its tables are computed from: the context counts, a
mostly empty (R, A) array of non-negative integers. Its nonzero entries are kept in
row-major order as two streams of unsigned LEB128 varints (the encoding of the archive's
header fields), each zlib-compressed: ``gaps``, the distance from each nonzero entry's
flat index to the previous one's (the first counted from -1), and ``values``, the
counts. For the 7x7, K = 256, 4-level rvq prior on Fashion-MNIST (426k nonzero counts
of 3.8M entries) the varints take 866 kB and zlib makes that 430 kB, against 7.6 MB for
the dense uint16 tables.

Everything here is exact integer work; reading checks every byte (a zlib stream that
ends where it should and inflates to no more than the array could need, no varint over
``MAX_VARINT_BYTES`` bytes, no non-canonical encoding, indices strictly increasing and
inside the array) and raises ValueError, which the prior turns into one DiscretaeError.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch

MAX_VARINT_BYTES = 7  # values below 2**49


def varint_bytes(values: np.ndarray) -> np.ndarray:
    """Non-negative integers (n,) -> their LEB128 varints, concatenated, as uint8."""
    v = np.asarray(values, dtype=np.int64).ravel()
    if v.size and (v.min() < 0 or v.max() >= 2 ** (7 * MAX_VARINT_BYTES)):
        raise ValueError(f"varint values must lie in [0, 2**{7 * MAX_VARINT_BYTES})")
    n_bytes = np.ones(len(v), dtype=np.int64)
    rest = v >> 7
    while rest.any():
        n_bytes += rest > 0
        rest >>= 7
    out = np.empty(int(n_bytes.sum()), dtype=np.uint8)
    starts = np.cumsum(n_bytes) - n_bytes
    for k in range(int(n_bytes.max(initial=0))):
        sel = n_bytes > k
        more = (n_bytes[sel] > k + 1).astype(np.int64) << 7
        out[starts[sel] + k] = ((v[sel] >> (7 * k)) & 0x7F) | more
    return out


def read_varints(data: np.ndarray) -> np.ndarray:
    """uint8 varint bytes -> (n,) int64 values; ValueError unless well formed."""
    b = np.asarray(data, dtype=np.uint8).ravel()
    if b.size == 0:
        return np.zeros(0, dtype=np.int64)
    ends = np.flatnonzero(b < 0x80)
    if len(ends) == 0 or ends[-1] != len(b) - 1:
        raise ValueError("a varint stream ends inside a value")
    starts = np.concatenate([[0], ends[:-1] + 1])
    lengths = ends - starts + 1
    if lengths.max() > MAX_VARINT_BYTES:
        raise ValueError(f"a varint is longer than {MAX_VARINT_BYTES} bytes")
    if np.any(b[ends[lengths > 1]] == 0):
        raise ValueError("a varint has a non-canonical encoding")
    offset = np.arange(len(b)) - np.repeat(starts, lengths)
    parts = (b & 0x7F).astype(np.int64) << (7 * offset)
    return np.add.reduceat(parts, starts)


def pack_sparse(counts: np.ndarray) -> dict[str, torch.Tensor]:
    """(R, A) non-negative integers -> ``gaps`` and ``values``, uint8 tensors holding the
    zlib-compressed varint streams of the nonzero entries in row-major order."""
    flat = np.asarray(counts).ravel()
    index = np.flatnonzero(flat)
    gaps = np.diff(index, prepend=-1)
    return {
        "gaps": _deflate(varint_bytes(gaps)),
        "values": _deflate(varint_bytes(flat[index].astype(np.int64))),
    }


def unpack_sparse(gaps: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> np.ndarray:
    """Inverse of :func:`pack_sparse` -> (R, A) int64; ValueError unless the streams hold
    as many gaps as values, every gap >= 1, every value >= 1 and every index in range."""
    size = int(shape[0]) * int(shape[1])
    g = read_varints(_inflate(gaps, "gaps", MAX_VARINT_BYTES * size))
    v = read_varints(_inflate(values, "values", MAX_VARINT_BYTES * size))
    if len(g) != len(v):
        raise ValueError(f"{len(g)} count positions but {len(v)} counts")
    if len(g) and (g.min() < 1 or v.min() < 1 or g.max() > size or int(g.sum()) > size):
        raise ValueError("the stored counts are out of range")
    out = np.zeros(size, dtype=np.int64)
    out[np.cumsum(g) - 1] = v
    return out.reshape(shape)


def _deflate(data: np.ndarray) -> torch.Tensor:
    packed = zlib.compress(np.ascontiguousarray(data, dtype=np.uint8).tobytes(), 9)
    return torch.frombuffer(bytearray(packed), dtype=torch.uint8)


def _inflate(t: torch.Tensor, name: str, limit: int) -> np.ndarray:
    """A uint8 tensor of one zlib stream -> its bytes (at most ``limit``) as uint8."""
    if t.dtype != torch.uint8 or t.dim() != 1:
        raise ValueError(f"{name} must be a 1-d uint8 tensor, got {t.dtype} {tuple(t.shape)}")
    z = zlib.decompressobj()
    try:
        raw = z.decompress(t.numpy().tobytes(), max(limit, 1))  # 0 would mean no limit
    except zlib.error as e:
        raise ValueError(f"{name} is not a zlib stream ({e})") from None
    if z.unconsumed_tail or not z.eof or z.unused_data:
        raise ValueError(f"{name} is longer than its array allows, incomplete, or followed by junk")
    return np.frombuffer(raw, dtype=np.uint8)


def small_int_tensor(a: np.ndarray) -> torch.Tensor:
    """Non-negative integers in the smallest tensor dtype that holds them: uint8, int16
    or int32 (safetensors' integer types that torch handles everywhere)."""
    a = np.asarray(a, dtype=np.int64)
    top = int(a.max(initial=0))
    if (a.size and a.min() < 0) or top >= 2**31:
        raise ValueError("small_int_tensor takes integers in [0, 2**31)")
    dtype = np.uint8 if top < 2**8 else np.int16 if top < 2**15 else np.int32
    return torch.from_numpy(a.astype(dtype))


def int_array(t: torch.Tensor) -> np.ndarray:
    """An integer tensor (any of uint8, int16, int32, int64) -> int64 array."""
    if t.dtype not in (torch.uint8, torch.int16, torch.int32, torch.int64):
        raise ValueError(f"expected an integer tensor, got {t.dtype}")
    return t.numpy().astype(np.int64)
