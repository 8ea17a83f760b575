"""The ``.dae`` code archive: a binary container for entropy-coded codes.

Format version 6. Its layout is version 2's, which extends version 1 (an archive without
refinement); version 3 codes each code symbol of an alphabet above 16 in two stages, its
group of 16 and then its place in the group (``discretae.compression.prior``), where
versions 1 and 2, still read, code it in one; version 4 starts each block's refinement
with its mode, which may code the residual from its neighbours
(``discretae.compression.refine``), where versions 2 and 3, still read, code it by class
alone; version 5 adds flag bit 3, a refinement coded in transform blocks with a quantizer
step (``discretae.compression.transform``) instead of a maximum error; version 6 keys
that residual's classes also by the residual the model expects in each transform block,
with a shorter list of its parameters, where version 5, still read, does not. Integers are
little-endian; a *varint* is an unsigned LEB128 integer of at most 10 bytes.

=========  =======  ===================================================================
field      size     meaning
=========  =======  ===================================================================
magic      4        ``b"\\x89DAE"``
version    1        format version: 6 (1 to 5 when written earlier)
flags      1        bit 0: file names follow; bit 1: codes coded with the uniform prior
                    (the model had none); bit 2 (version >= 2): a refinement follows the
                    codes; bit 3 (version >= 5, with bit 2): the refinement is a transform
                    residual; other bits are 0
model      16       the first 16 bytes of the sha256 of the model that made the codes
                    (``discretae.compression.codec.model_digest``: network config, every tensor,
                    and the code prior); decoding with another model is refused
n_images   varint   number of images, >= 1
shape      3 varint channels, height, width of the decoded images
grid       2 varint h, w: code cells per image (1, 1 for a global code)
levels     varint   code symbols coded per cell: all T of the model, or the first l of
                    a residual (rvq) model
n_codes    varint   alphabet size A of every symbol
block      varint   images per block (the last block may hold fewer)
max_error  varint   only with flag bit 2: the refinement's maximum error E, <= 127
                    (``discretae.compression.refine``); with flag bit 3 the transform's
                    step S, 1 to 255 (``discretae.compression.transform``)
names_len  varint   only with flag bit 0: byte length of the names field
words      varint   one per block: its payload length in 32-bit words
refine     varint   only with flag bit 2, one per block: the refinement's length in words
names      names_   only with flag bit 0: zlib-compressed UTF-8 file names, one per
           len      image, joined by ``"\\n"``
payload    4/word   each block's ANS words (``discretae.compression.prior``), uint32, block by
                    block; with flag bit 2, each block's code words are followed by its
                    refinement words (``discretae.compression.refine``)
crc32      4        CRC-32 (zlib) of every byte before it
=========  =======  ===================================================================

Blocks bound memory: an encoder or decoder holds one block of codes at a time.
``parse_archive`` checks, in this order: size, magic, version (a newer version is refused
with its own message), checksum, then every field against the bytes that are actually
there, before anything is allocated or decoded.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from dataclasses import dataclass

import numpy as np

from discretae.core.errors import DiscretaeError

MAGIC = b"\x89DAE"
FORMAT_VERSION = 6
HASH_BYTES = 16
FLAG_NAMES = 1
FLAG_UNIFORM = 2
FLAG_REFINE = 4  # version 2
FLAG_TRANSFORM = 8  # version 5
MAX_ERROR = 127
MAX_STEP = 255
_FIXED = len(MAGIC) + 2 + HASH_BYTES
_CRC = 4
MAX_SIDE = 2**16  # image and grid sides
MAX_NAME_BYTES = 4096  # per image, after decompression


@dataclass(frozen=True)
class ArchiveHeader:
    """Everything in an archive but the payload. ``shape`` is (C, H, W), ``grid`` (h, w)."""

    model_hash: bytes
    n_images: int
    shape: tuple[int, int, int]
    grid: tuple[int, int]
    levels: int
    n_codes: int
    block: int
    uniform_prior: bool = False
    # the refinement's maximum error (its step when ``transform``), None without one;
    # then per block its length in words (filled by parse_archive; pack_archive takes
    # the words themselves)
    max_error: int | None = None
    refine_words: tuple[int, ...] = ()
    transform: bool = False
    # the format: 3 codes symbols in two stages with an end mark; 1 and 2 (read, and
    # written only to test that they still read) in one stage
    version: int = FORMAT_VERSION

    @property
    def n_blocks(self) -> int:
        return math.ceil(self.n_images / self.block)

    def block_sizes(self) -> list[int]:
        return [min(self.block, self.n_images - b * self.block) for b in range(self.n_blocks)]


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


class _Reader:
    def __init__(self, data: bytes, start: int, end: int) -> None:
        self.data, self.pos, self.end = data, start, end

    def varint(self, what: str) -> int:
        value = shift = 0
        for _ in range(10):
            if self.pos >= self.end:
                raise DiscretaeError(f"corrupt archive: it ends inside the {what} field")
            byte = self.data[self.pos]
            self.pos += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
        raise DiscretaeError(f"corrupt archive: the {what} field is not a valid varint")

    def take(self, n: int, what: str) -> bytes:
        if n > self.end - self.pos:
            raise DiscretaeError(f"corrupt archive: {what} runs past the end of the file")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out


def pack_archive(
    header: ArchiveHeader,
    blocks: list[np.ndarray],
    names: list[str] | None = None,
    refine: list[np.ndarray] | None = None,
) -> bytes:
    """Serialise a header, one uint32 word array per block, optional names and, when
    ``header.max_error`` is set, one refinement word array per block."""
    if len(blocks) != header.n_blocks:
        raise ValueError(f"{len(blocks)} payload blocks for {header.n_blocks} blocks of images")
    if len(header.model_hash) != HASH_BYTES:
        raise ValueError(f"model_hash must be {HASH_BYTES} bytes")
    refined = header.max_error is not None
    if refined != (refine is not None) or (refined and len(refine) != header.n_blocks):
        raise ValueError("a refinement needs max_error and one word array per block")
    flags = (FLAG_NAMES if names is not None else 0) | (FLAG_UNIFORM if header.uniform_prior else 0)
    flags |= FLAG_REFINE if refined else 0
    if header.transform and not (refined and header.version >= 5):
        raise ValueError("a transform residual needs a refinement and format version 5")
    flags |= FLAG_TRANSFORM if header.transform else 0
    version = header.version if header.version >= 3 else 2 if refined else 1
    parts = [MAGIC, bytes([version, flags]), header.model_hash]
    fields = [header.n_images, *header.shape, *header.grid, header.levels, header.n_codes]
    fields.append(header.block)
    if refined:
        fields.append(header.max_error)
    packed_names = b""
    if names is not None:
        if len(names) != header.n_images:
            raise ValueError(f"{len(names)} names for {header.n_images} images")
        packed_names = zlib.compress("\n".join(names).encode("utf-8"), 9)
        fields.append(len(packed_names))
    fields += [len(words) for words in blocks]
    fields += [len(words) for words in refine or []]
    parts += [_varint(v) for v in fields]
    parts.append(packed_names)
    for b, words in enumerate(blocks):
        parts.append(np.asarray(words, dtype="<u4").tobytes())
        if refined:
            parts.append(np.asarray(refine[b], dtype="<u4").tobytes())
    body = b"".join(parts)
    return body + zlib.crc32(body).to_bytes(_CRC, "little")


def parse_archive(data: bytes) -> tuple[ArchiveHeader, list[str] | None, list[np.ndarray]]:
    """Bytes -> (header, names or None, uint32 words per block), fully validated. With a
    refinement, a block's words are its code words followed by its refinement words
    (``header.refine_words`` of them).

    Raises:
        DiscretaeError: not an archive, a newer format version, a checksum mismatch
            (truncated or corrupt), or fields that disagree with the file's size.
    """
    if len(data) < len(MAGIC) or data[: len(MAGIC)] != MAGIC:
        raise DiscretaeError("not a discretae archive (.dae): the magic number is missing")
    if len(data) < _FIXED + _CRC:
        raise DiscretaeError(f"truncated archive: {len(data)} bytes is shorter than any header")
    version, flags = data[len(MAGIC)], data[len(MAGIC) + 1]
    if version > FORMAT_VERSION:
        raise DiscretaeError(
            f"the archive has format version {version}, but this discretae reads up to "
            f"version {FORMAT_VERSION}; upgrade discretae to read it"
        )
    body_end = len(data) - _CRC
    if zlib.crc32(data[:body_end]) != int.from_bytes(data[body_end:], "little"):
        raise DiscretaeError("truncated or corrupt archive: the checksum does not match")
    if version < 1:
        raise DiscretaeError(f"corrupt archive: invalid format version {version}")
    known = FLAG_NAMES | FLAG_UNIFORM | (FLAG_REFINE if version >= 2 else 0)
    known |= FLAG_TRANSFORM if version >= 5 and flags & FLAG_REFINE else 0
    if flags & ~known:
        raise DiscretaeError(f"corrupt archive: unknown flags {flags:#04x}")
    transform = bool(flags & FLAG_TRANSFORM)
    model_hash = bytes(data[len(MAGIC) + 2 : _FIXED])
    r = _Reader(data, _FIXED, body_end)
    n_images = r.varint("image count")
    shape = (r.varint("channels"), r.varint("height"), r.varint("width"))
    grid = (r.varint("grid height"), r.varint("grid width"))
    levels, n_codes, block = r.varint("levels"), r.varint("code count"), r.varint("block size")
    if n_images < 1 or block < 1 or levels < 1 or n_codes < 1:
        raise DiscretaeError("corrupt archive: a count in the header is zero")
    if shape[0] not in (1, 3, 4) or not all(1 <= s <= MAX_SIDE for s in shape[1:] + grid):
        raise DiscretaeError(f"corrupt archive: image shape {shape} or grid {grid} is invalid")
    max_error = r.varint("maximum error") if flags & FLAG_REFINE else None
    if transform and not 1 <= max_error <= MAX_STEP:
        raise DiscretaeError(f"corrupt archive: residual step {max_error} is not in 1..{MAX_STEP}")
    if not transform and max_error is not None and max_error > MAX_ERROR:
        raise DiscretaeError(f"corrupt archive: maximum error {max_error} is above {MAX_ERROR}")
    header = ArchiveHeader(
        model_hash, n_images, shape, grid, levels, n_codes, block, bool(flags & FLAG_UNIFORM)
    )
    names_len = r.varint("names length") if flags & FLAG_NAMES else None
    # every block needs at least one byte for its word count: bound n_blocks first
    if header.n_blocks > r.end - r.pos:
        raise DiscretaeError(f"corrupt archive: {n_images} images cannot fit in this file")
    words = [r.varint("block length") for _ in range(header.n_blocks)]
    extra = []
    if max_error is not None:
        extra = [r.varint("refinement length") for _ in range(header.n_blocks)]
    header = dataclasses.replace(
        header,
        max_error=max_error,
        refine_words=tuple(extra),
        version=version,
        transform=transform,
    )
    words = [w + e for w, e in zip(words, extra, strict=True)] if extra else words
    payload = 4 * sum(words)
    if (names_len or 0) + payload != r.end - r.pos:
        raise DiscretaeError("truncated or corrupt archive: field lengths disagree with its size")
    names = None
    if names_len is not None:
        names = _unpack_names(r.take(names_len, "names"), n_images)
    blocks = []
    for n_words in words:
        raw = r.take(4 * n_words, "payload")
        blocks.append(np.frombuffer(raw, dtype="<u4").astype(np.uint32))
    return header, names, blocks


def _unpack_names(packed: bytes, n_images: int) -> list[str]:
    limit = n_images * MAX_NAME_BYTES
    try:
        z = zlib.decompressobj()
        raw = z.decompress(packed, limit)
        if z.unconsumed_tail or not z.eof:
            raise DiscretaeError("corrupt archive: the names field is too long or incomplete")
        names = raw.decode("utf-8").split("\n")
    except (zlib.error, UnicodeDecodeError) as e:
        raise DiscretaeError(f"corrupt archive: unreadable names field ({e})") from None
    if len(names) != n_images:
        raise DiscretaeError(f"corrupt archive: {len(names)} names for {n_images} images")
    return names
