"""Refinement: the residual between an image and the image its codes decode to, coded with
a bound on the error: the rate knob from the codes' own quality up to lossless.

With a maximum error E >= 0 and the step S = 2E + 1, the encoder codes, for every pixel and
channel, ``q = floor((x - base + E) / S)`` where ``base`` is the uint8 image the codes
decode to; the decoder outputs ``clip(base + q * S, 0, 255)``. No value is off by more
than E (E = 0 is lossless) when the decoder computes the same ``base`` as the encoder: the
same network, the same arithmetic. (A machine whose floating point rounds one decoded
value differently moves that value by one more.)

Entropy model. Each symbol q is coded under one of ``N_CLASSES`` two-sided geometric
distributions: ``P(0) = z``, ``P(q = +-m) = (1 - z) (1 - theta) theta^(m - 1)``, split
between the signs as ``s`` and ``1 - s``. The class of a symbol is computed from the codes
alone, so it is the same on every machine: the model's refinement table holds, for each
number of levels l, level-0 code a and pixel offset within its cell (channel, row, column),
the mean |x - base| of the training images, times 16, rounded. The class is the number of
thresholds ``2 * EDGES[k] * S`` that this value reaches: how large the residual usually is
there, relative to the step. Measured on digits codes (4x4 grid, rvq K = 64), these classes
code the residual in 13% fewer bytes than one distribution for all pixels; the class from
the decoded image's local contrast saved 18%, but the decoded image is floating-point
arithmetic and may differ between machines, and a class that differs breaks decoding.
A model without a table (or whose table would be too large) codes every symbol in class 0.

Block stream (one per archive block, ANS words). From archive format 4 it starts with the
block's mode (``Uniform(2)``): 0, the classes alone, as below; 1, every symbol predicted
and modelled from its decoded neighbours (:mod:`discretae.compression.refine_context`). The
encoder codes both and keeps the shorter. Mode 0, and the whole stream of formats 2 and 3:
a ``N_CLASSES``-bit mask of the classes present; for each, ``z``, ``s`` and ``theta`` as
16-bit integers (value / 65536), fitted by the encoder on the block; then each present
class's symbols in raster order (image, channel, row, column), class by class. The
probabilities are integers computed from the three parameters with correctly rounded
float64 steps, so decoding is exact everywhere.
"""

from __future__ import annotations

import hashlib
import json
import math

import constriction
import numpy as np
import torch

from discretae.compression import refine_context
from discretae.core.errors import DiscretaeError

EDGES = (1, 2, 4, 6, 8, 12, 16, 24, 32, 48, 64)  # eighths of a step
N_CLASSES = len(EDGES) + 1
SCALE = 16  # the table holds 16 * mean |residual|
MAX_TABLE = 2**20  # entries; a larger table drops the code from the key
MAX_ERROR = 127
PARAM = 2**16
TABLE_SCALE = 2**16
KEY = "refinement"
N_CONTEXTS = refine_context.n_contexts(N_CLASSES)
_MODE = constriction.stream.model.Uniform(2)  # format 4: 0 by class, 1 from neighbours


def step_of(max_error: int) -> int:
    """The quantization step for a maximum error."""
    return 2 * int(max_error) + 1


def check_max_error(max_error) -> int:
    if isinstance(max_error, bool) or not isinstance(max_error, (int, np.integer)):
        raise DiscretaeError(f"max_error must be an integer in [0, {MAX_ERROR}], got {max_error!r}")
    if not 0 <= max_error <= MAX_ERROR:
        raise DiscretaeError(f"max_error must lie in [0, {MAX_ERROR}], got {max_error}")
    return int(max_error)


def _pixel_layout(shape, grid) -> tuple[np.ndarray, np.ndarray, int]:
    """(cell (H, W) raster index, offset (C, H, W) index, number of offsets)."""
    c, h, w = shape
    gh, gw = grid
    rows, cols = np.arange(h), np.arange(w)
    cell = (rows * gh // h)[:, None] * gw + (cols * gw // w)[None, :]
    sy, sx = -(-h // gh), -(-w // gw)
    oy, ox = (rows * gh % h) // gh, (cols * gw % w) // gw
    offset = (np.arange(c)[:, None, None] * sy + oy[None, :, None]) * sx + ox[None, None, :]
    return cell, offset, c * sy * sx


class Refinement:
    """The refinement table of a model and the coding of residual blocks.

    Args:
        shape: (C, H, W) of the images.
        grid: (h, w) code cells.
        table: (T, A', n_offsets) int64, 16 x mean |residual| per level count, level-0
            code (A' = A, or 1 when the code is not part of the key) and offset; or None
            (every symbol in class 0).
    """

    def __init__(self, shape, grid, table: np.ndarray | None = None) -> None:
        self.shape = tuple(int(s) for s in shape)
        self.grid = (int(grid[0]), int(grid[1]))
        self.cell, self.offset, self.n_offsets = _pixel_layout(self.shape, self.grid)
        self.table = None if table is None else np.asarray(table, dtype=np.int64)
        if self.table is not None and (
            self.table.ndim != 3 or self.table.shape[2] != self.n_offsets or self.table.min() < 0
        ):
            raise DiscretaeError(f"the refinement table has shape {self.table.shape}")

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(cls, x: np.ndarray, codes: np.ndarray, bases: list[np.ndarray], n_codes: int):
        """Fit the table: x (N, C, H, W) uint8 images, codes (N, h, w, T) their symbols,
        bases[l - 1] (N, C, H, W) uint8 the images decoded from their first l levels."""
        n, c, h, w = x.shape
        grid, n_levels = codes.shape[1:3], codes.shape[3]
        ref = cls((c, h, w), grid)
        keyed = n_levels * n_codes * ref.n_offsets <= MAX_TABLE
        width = n_codes if keyed else 1
        table = np.zeros((n_levels, width, ref.n_offsets), dtype=np.int64)
        key = ref._key(codes, width)
        counts = np.bincount(key.ravel(), minlength=width * ref.n_offsets)
        for lv, base in enumerate(bases):
            r = np.abs(x.astype(np.int16) - base.astype(np.int16)).astype(np.float64)
            sums = np.bincount(key.ravel(), r.ravel(), minlength=width * ref.n_offsets)
            mean = sums / np.maximum(counts, 1)
            # unseen keys take the mean of their offset
            per_offset = sums.reshape(width, -1).sum(0) / np.maximum(
                counts.reshape(width, -1).sum(0), 1
            )
            mean = np.where(counts > 0, mean, np.tile(per_offset, width))
            table[lv] = np.minimum(np.rint(mean * SCALE), 2**31 - 1).reshape(width, -1)
        return cls((c, h, w), grid, table)

    def _key(self, codes: np.ndarray, width: int) -> np.ndarray:
        """(n, C, H, W) table column: level-0 code of the pixel's cell and its offset."""
        n = len(codes)
        first = codes[..., 0].reshape(n, -1)[:, self.cell] if width > 1 else 0
        return np.asarray(first, dtype=np.int64)[:, None] * self.n_offsets + self.offset[None]

    def means(self, codes: np.ndarray) -> np.ndarray | None:
        """(n, C, H, W) int64: 16 x the mean |residual| the table holds for every pixel of
        images coded with ``codes.shape[-1]`` levels, from the codes alone; None without a
        table."""
        if self.table is None:
            return None
        width = self.table.shape[1]
        return self.table[codes.shape[-1] - 1].ravel()[self._key(codes, width)]

    def classes(self, codes: np.ndarray, step: int) -> np.ndarray:
        """(n, C, H, W) class of every residual symbol of a block coded with ``levels``
        = codes.shape[-1] levels, from the codes alone."""
        v = self.means(codes)
        if v is None:
            return np.zeros((len(codes), *self.shape), dtype=np.int64)
        thresholds = 2 * np.asarray(EDGES, dtype=np.int64) * step
        return np.searchsorted(thresholds, v, side="right")

    # ------------------------------------------------------------------ storage
    def config(self) -> dict:
        return {
            "version": 1,
            "shape": list(self.shape),
            "grid": list(self.grid),
            "table_shape": None if self.table is None else list(self.table.shape),
        }

    def to_tensors(self) -> dict[str, torch.Tensor]:
        if self.table is None:
            return {}
        return {"table": torch.from_numpy(self.table.astype(np.int32))}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], config: dict) -> Refinement:
        try:
            if int(config["version"]) != 1:
                raise ValueError(f"version {config['version']}")
            table = None
            if config["table_shape"] is not None:
                t = tensors["table"]
                if t.dtype != torch.int32 or list(t.shape) != list(config["table_shape"]):
                    raise ValueError(f"table {t.dtype} {tuple(t.shape)}")
                table = t.numpy().astype(np.int64)
            return cls(config["shape"], config["grid"], table)
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise DiscretaeError(f"the model's refinement table is corrupt: {e}") from None

    def digest(self) -> bytes:
        h = hashlib.sha256(json.dumps(self.config(), sort_keys=True).encode())
        if self.table is not None:
            h.update(self.table.astype("<i4").tobytes())
        return h.digest()

    # ------------------------------------------------------------------ coding
    def encode_block(
        self,
        x: np.ndarray,
        base: np.ndarray,
        codes: np.ndarray,
        max_error: int,
        *,
        modes: bool = True,
        mode: int | None = None,
    ) -> np.ndarray:
        """x, base (n, C, H, W) uint8, codes (n, h, w, l) -> ANS words (uint32). ``modes``:
        format 4's layout, the block's mode first and then its symbols coded by class
        (mode 0) or from their neighbours (mode 1, ``refine_context``), whichever is
        shorter unless ``mode`` names one; False: formats 2 and 3 (by class, no mode)."""
        step = step_of(max_error)
        top = 255 // step + 1
        q = np.floor_divide(x.astype(np.int16) - base.astype(np.int16) + max_error, step)
        cls = self.classes(codes, step)
        best = None
        for m in (0,) if not modes else (0, 1) if mode is None else (mode,):
            coder = constriction.stream.stack.AnsCoder()
            if m == 0:
                _push_classes(coder, q, cls, top)
            else:
                refine_context.encode(coder, q, cls, top, N_CONTEXTS, _fit_params, geometric_model)
            if modes:
                coder.encode_reverse(np.array([m], dtype=np.int32), _MODE)
            words = coder.get_compressed()
            if best is None or len(words) < len(best):
                best = words
        return best

    def decode_block(
        self,
        words: np.ndarray,
        base: np.ndarray,
        codes: np.ndarray,
        max_error: int,
        *,
        modes: bool = True,
    ) -> np.ndarray:
        """ANS words, base (n, C, H, W) uint8, codes (n, h, w, l) -> the images (uint8);
        DiscretaeError unless the words hold exactly this block's residual. ``modes`` as
        for :meth:`encode_block`: False reads formats 2 and 3."""
        step = step_of(max_error)
        top = 255 // step + 1
        cls = self.classes(codes, step)

        def pop(coder):
            mode = int(coder.decode(_MODE, 1)[0]) if modes else 0
            if mode == 0:
                return _pop_classes(coder, cls, top)
            return refine_context.decode(coder, cls, top, N_CONTEXTS, geometric_model)

        q = decode_exactly(words, pop, "refinement")
        out = base.astype(np.int16) + q * np.int16(step)
        return np.clip(out, 0, 255).astype(np.uint8)


def decode_exactly(words: np.ndarray, pop, what: str):
    """``pop(coder)`` on an ANS coder over ``words``, which must use every word:
    DiscretaeError for malformed words (constriction raises ValueError) or words left."""
    try:
        coder = constriction.stream.stack.AnsCoder(np.asarray(words, dtype=np.uint32))
        out = pop(coder)
        exact = coder.is_empty()
    except DiscretaeError:
        raise
    except Exception as e:  # constriction reports malformed words as ValueError
        raise DiscretaeError(f"corrupt archive: the {what} does not decode ({e})") from None
    if not exact:
        raise DiscretaeError(f"corrupt archive: the {what} holds more data than it codes")
    return out


def _push_classes(coder, q: np.ndarray, cls: np.ndarray, top: int) -> None:
    """Mode 0: push the symbols q, class by class, onto the ANS coder."""
    present, params = [], []
    for k in range(N_CLASSES):
        sel = q[cls == k]
        if sel.size:
            present.append(k)
            params.append((_fit_params(sel), sel))
    for p, sel in reversed(params):
        coder.encode_reverse((sel + top).astype(np.int32), geometric_model(p, top))
    uniform = constriction.stream.model.Uniform(PARAM)
    flat = np.array([v for p, _ in params for v in p], dtype=np.int32)
    if len(flat):
        coder.encode_reverse(flat, uniform)
    mask = sum(1 << k for k in present)
    coder.encode_reverse(np.array([mask], dtype=np.int32),
                         constriction.stream.model.Uniform(1 << N_CLASSES))  # fmt: skip


def _pop_classes(coder, cls: np.ndarray, top: int) -> np.ndarray:
    """Mode 0: the symbols :func:`_push_classes` pushed, (n, C, H, W) int16."""
    counts = np.bincount(cls.ravel(), minlength=N_CLASSES)
    q = np.zeros(cls.shape, dtype=np.int16)
    mask = int(coder.decode(constriction.stream.model.Uniform(1 << N_CLASSES), 1)[0])
    present = [k for k in range(N_CLASSES) if mask >> k & 1]
    if present != [k for k in range(N_CLASSES) if counts[k]]:
        raise DiscretaeError("corrupt archive: the refinement's classes do not fit")
    flat = coder.decode(constriction.stream.model.Uniform(PARAM), 3 * len(present))
    for i, k in enumerate(present):
        p = tuple(int(v) for v in flat[3 * i : 3 * i + 3])
        q[cls == k] = coder.decode(geometric_model(p, top), int(counts[k])) - top
    return q


def _fit_params(q: np.ndarray) -> tuple[int, int, int]:
    """(z, s, theta) as 16-bit integers fitted to the symbols of one class."""
    n = q.size
    nonzero = q[q != 0]
    z = (n - nonzero.size) / n
    s = float((nonzero > 0).mean()) if nonzero.size else 0.5
    mean = float(np.abs(nonzero).mean()) if nonzero.size else 1.0
    theta = 1.0 - 1.0 / mean
    return tuple(int(min(PARAM - 1, max(1, round(v * PARAM)))) for v in (z, s, theta))


def geometric_model(params: tuple[int, int, int], top: int):
    """The categorical model over q + top, q in [-top, top], of 16-bit parameters: every
    step a correctly rounded float64 operation, so every machine gets the same integers."""
    z, s, theta = (v / PARAM for v in params)
    w = [0.0] * (2 * top + 1)
    w[top] = z
    g = (1.0 - z) * (1.0 - theta)
    for m in range(1, top + 1):
        w[top + m] = g * s
        w[top - m] = g * (1.0 - s)
        g *= theta
    total = math.fsum(w)
    room = TABLE_SCALE - len(w)
    ints = [max(1, round(v / total * room)) for v in w]
    return constriction.stream.model.Categorical(np.asarray(ints, dtype=np.float64), perfect=False)
