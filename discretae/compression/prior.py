"""Code priors: a context model over grids of discrete codes, and ANS coding of code blocks.

Codes of every model kind are read as symbols ``(N, h, w, T)`` in ``[0, A)``: a grid latent
has h x w cells (a global latent is one 1 x 1 cell), each holding T symbols (the levels of a
residual model, the groups of a grouped Gumbel code, the bits of a binary code, or just 1).
A is the codebook size (2 for bits).

The context of symbol ``(i, j, t)``:

- ``t = 0``: the cell's position, and the classes of the t = 0 symbols to its left and
  above (one more class stands for "outside the grid");
- ``t > 0``: the level t and the class of symbol t - 1 of the same cell.

A class map groups the A codes of a level into C classes: k-means on the codebook rows
when there are more codes than classes fit the table budget, else every code is its own
class. Per context, the probability of symbol s is
``(n(context, s) + alpha * base(s)) / (n(context) + alpha)``, where ``base`` is the
Laplace-smoothed frequency of s at that position (t = 0) or level (t > 0): a context seen
rarely falls back to the plain frequencies. Measured on Fashion-MNIST codes (7x7 grid,
rvq with K = 256, fitted on the 60k train images, 2000 test images): level 0 costs 4.9
bits per symbol with 16 neighbour classes (5.2 with 8; 6.4 from position frequencies
alone) and level 1 costs 6.1 given the level-0 code, against 8 for fixed-width codes.
Neighbour classes at levels t > 0 saved under 2% and are left out.

The probabilities are quantized to uint16 tables, so the encoder and the decoder feed
constriction the same integers and decoding is exact on any machine. No probability
exceeds ``P_MAX = 2**(-1/32)``: every symbol costs at least 1/32 bit, which bounds how many
symbols a payload of a given size can hold (``max_symbols``), so a header cannot make the
decoder allocate or loop without bound.

A model file stores what the tables are computed from, not the tables: the nonzero
context counts (:mod:`discretae.compression.prior_storage`; the position and level
frequencies are their sums), the class maps and the prior's sha256 (``digest``: config,
tables, class maps). Loading rebuilds the tables with float64 arithmetic whose every
step is correctly rounded (sums of integers, elementwise products and quotients,
``rint``, ``ceil``), so every machine gets the same integers, and checks the sha256.
For the 7x7, K = 256, 4-level rvq model on Fashion-MNIST (2 epochs, prior fitted on the
60k train images) this takes the prior from 7.6 MB of dense tables to 0.43 MB, and the
model file from 8.7 MB to 1.5 MB, with byte-identical archives. Model files that hold
the dense ``table`` (written before) still load.

Coding order within a block of n codes: cells in raster order, levels within a cell, and
the n codes of each slot in order; constriction's ``AnsCoder`` (a stack) encodes that
sequence in reverse, so it decodes forward with every context already known.

How the symbols become ANS words, and archive format 3's two stages:
:mod:`discretae.compression.ans`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math

import numpy as np
import torch

from discretae.compression.ans import (
    CoderTable,
    decode_slots,
    encode_slots,
    max_ans_symbols,
)
from discretae.compression.prior_storage import (
    int_array,
    pack_sparse,
    small_int_tensor,
    unpack_sparse,
)
from discretae.core.errors import DiscretaeError

# 2**(-1/32), written out so that no machine's pow() changes a rebuilt table
P_MAX = float.fromhex("0x1.f50765b6e4540p-1")  # every symbol costs >= 1/32 bit
TABLE_SCALE = 2**16
TABLE_BUDGET = 2**22  # table entries (8 MiB as uint16) per part of the prior
MAX_ENTRIES = 2**25  # table entries a stored prior may rebuild (256 MiB of float64)
MAX_CLASSES = 16  # neighbour classes at t = 0: (C + 1)**2 contexts per position
ALPHA_NEIGHBOURS = 64.0  # measured on Fashion-MNIST codes: 16..256 differ by < 1%
ALPHA_PREVIOUS = 64.0
LAPLACE = 0.5


def _classes(vectors: np.ndarray | None, n_codes: int, n_classes: int, counts, seed: int):
    """(A,) class id per code: identity when every code fits, else k-means on the codebook
    rows (or equal-mass frequency bands when the model has no codebook rows)."""
    if n_classes >= n_codes:
        return np.arange(n_codes)
    if n_classes <= 1:
        return np.zeros(n_codes, dtype=np.int64)
    if vectors is not None:
        from discretae.quantizers.kmeans import KMeans

        km = KMeans(n_classes, n_init=2, random_state=seed).fit(torch.as_tensor(vectors).float())
        return km.labels_.cpu().numpy().astype(np.int64)
    order = np.argsort(-np.asarray(counts, np.float64), kind="stable")
    cum = np.cumsum(np.asarray(counts, np.float64)[order]) / max(float(np.sum(counts)), 1.0)
    bands = np.minimum((cum * n_classes).astype(np.int64), n_classes - 1)
    out = np.empty(n_codes, dtype=np.int64)
    out[order] = bands
    return out


def quantize_rows(p: np.ndarray) -> np.ndarray:
    """Rows of probabilities (R, A) -> uint16 tables with every entry >= 1 and no entry
    above P_MAX of its row's sum."""
    q = np.maximum(1, np.rint(p * (TABLE_SCALE - p.shape[1]))).astype(np.int64)
    total = q.sum(1)
    top = q.argmax(1)
    qmax = q[np.arange(len(q)), top]
    excess = np.ceil((qmax - P_MAX * total) / (1.0 - P_MAX)).astype(np.int64)
    q[np.arange(len(q)), top] = qmax - np.maximum(excess, 0)
    return q.astype(np.uint16)


def _smoothed(counts: np.ndarray, base: np.ndarray, alpha: float) -> np.ndarray:
    """counts (R, A), base (R, A) rows summing to 1 -> (R, A) probabilities."""
    return (counts + alpha * base) / (counts.sum(1, keepdims=True) + alpha)


def _laplace(counts: np.ndarray) -> np.ndarray:
    return (counts + LAPLACE) / (counts.sum(-1, keepdims=True) + LAPLACE * counts.shape[-1])


def _context_table(counts: np.ndarray, n_positions: int, n_classes: list[int]) -> np.ndarray:
    """The uint16 table (R, A) of a context prior from its counts (R, A): the rows of the
    t = 0 contexts, smoothed towards their position's frequencies, then each level's,
    smoothed towards the level's. The frequencies are sums of the counts."""
    a, k = counts.shape[1], (n_classes[0] + 1) ** 2
    first = counts[: n_positions * k]
    base = np.repeat(_laplace(first.reshape(n_positions, k, a).sum(1)), k, axis=0)
    rows = [_smoothed(first, base, ALPHA_NEIGHBOURS)]
    start = n_positions * k
    for c in n_classes[1:]:
        part = counts[start : start + c]
        base = np.broadcast_to(_laplace(part.sum(0)), part.shape)
        rows.append(_smoothed(part, base, ALPHA_PREVIOUS))
        start += c
    return quantize_rows(np.concatenate(rows))


class CodePrior:
    """Probability tables over code symbols ``(h, w, T)`` in ``[0, A)``.

    Build one with :meth:`fit` (from training codes) or :meth:`uniform`; store it with
    :meth:`to_tensors` / :meth:`from_tensors`. ``encode_block`` / ``decode_block`` turn a
    block of codes into ANS words and back.

    Attributes: ``grid`` (h, w), ``n_levels`` T, ``n_codes`` A, ``kind`` ("context" or
    "uniform"), ``n_classes`` (C0 for t = 0, then C_t for the class of symbol t - 1).
    """

    def __init__(self, grid, n_levels, n_codes, kind, n_classes, class_maps, table, counts=None):
        self.grid = (int(grid[0]), int(grid[1]))
        self.n_levels, self.n_codes, self.kind = int(n_levels), int(n_codes), kind
        self.n_classes = [int(c) for c in n_classes]
        self.class_maps = class_maps  # (T, A) int64: class of code a at level t
        self.table = table  # (R, A) uint16
        # (R, A) int64 training counts the table is computed from (None: read from a
        # model file that stored only the table)
        self.counts = counts
        self.choice: dict | None = None  # how fit_prior chose this prior (not stored)
        self._probs = table.astype(np.float64)
        self._coder_table = CoderTable(self._probs)
        h, w = self.grid
        c0 = self.n_classes[0]
        # first table row of each level's contexts, then the row count
        self._offsets = [0, h * w * (c0 + 1) ** 2 if kind == "context" else 1]
        for t in range(1, self.n_levels):
            self._offsets.append(
                self._offsets[-1] + (self.n_classes[t] if kind == "context" else 0)
            )

    # ------------------------------------------------------------------ building
    @classmethod
    def uniform(cls, grid, n_levels: int, n_codes: int) -> CodePrior:
        """Every symbol equally likely: log2(A) bits each (for models without a prior)."""
        table = quantize_rows(np.full((1, n_codes), 1.0 / n_codes))
        maps = np.zeros((n_levels, n_codes), dtype=np.int64)
        return cls(grid, n_levels, n_codes, "uniform", [0] * n_levels, maps, table)

    @classmethod
    def fit(
        cls,
        codes: np.ndarray,
        n_codes: int,
        vectors: list[np.ndarray | None] | None = None,
        *,
        seed: int = 0,
    ) -> CodePrior:
        """Fit the tables on training codes.

        Args:
            codes: (N, h, w, T) integers in [0, n_codes).
            n_codes: alphabet size A.
            vectors: per level t, the (A, D) codebook rows that k-means groups into
                classes, or None (frequency bands are used instead).
            seed: k-means seed.
        """
        codes = checked_codes(codes, n_codes)
        n, h, w, n_levels = codes.shape
        a, p = int(n_codes), h * w
        vectors = vectors or [None] * n_levels
        sym = codes.reshape(n, p, n_levels).astype(np.int64)
        c0 = max(0, min(MAX_CLASSES, a, math.isqrt(TABLE_BUDGET // (p * a)) - 1))
        n_classes = [c0] + [min(a, TABLE_BUDGET // a)] * (n_levels - 1)
        # class_maps[0]: classes of t = 0 codes (neighbour context); class_maps[t], t > 0:
        # classes of level t - 1 codes (the context of level t)
        maps = np.zeros((n_levels, a), dtype=np.int64)
        for t in range(n_levels):
            src = max(t - 1, 0)
            freq = np.bincount(sym[:, :, src].ravel(), minlength=a)
            maps[t] = _classes(vectors[src], a, n_classes[t], freq, seed)
        every_pos = np.broadcast_to(np.arange(p), (n, p))
        ctx = _neighbour_context(maps[0][sym[:, :, 0].reshape(n, h, w)], c0).reshape(n, p)
        counts = np.zeros((p, (c0 + 1) ** 2, a), dtype=np.int64)
        np.add.at(counts, (every_pos, ctx, sym[:, :, 0]), 1)
        parts = [counts.reshape(-1, a)]
        for t in range(1, n_levels):
            counts = np.zeros((n_classes[t], a), dtype=np.int64)
            np.add.at(counts, (maps[t][sym[:, :, t - 1].ravel()], sym[:, :, t].ravel()), 1)
            parts.append(counts)
        counts = np.concatenate(parts)
        table = _context_table(counts, p, n_classes)
        return cls((h, w), n_levels, a, "context", n_classes, maps, table, counts)

    # ------------------------------------------------------------------ storage
    def config(self) -> dict:
        return {
            "kind": self.kind,
            "grid": list(self.grid),
            "n_levels": self.n_levels,
            "n_codes": self.n_codes,
            "n_classes": self.n_classes,
        }

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """Tensors for a model file: ``counts.gaps`` and ``counts.values`` (the nonzero
        counts, see :func:`~discretae.compression.prior_storage.pack_sparse`),
        ``class_maps`` (T, A) and ``sha256``, the :meth:`digest` of the config, tables and
        class maps, which loading checks. A prior read from a file that held only its
        ``table`` (R, A) writes that again, as int16 holding the uint16 bits."""
        maps = {"class_maps": small_int_tensor(self.class_maps)}
        if self.counts is None and self.kind == "context":
            table = torch.from_numpy(self.table.astype(np.uint16).view(np.int16))
            return {"table": table, **maps}
        counts = self.counts if self.counts is not None else np.zeros((1, self.n_codes))
        packed = pack_sparse(counts)
        return {
            "counts.gaps": packed["gaps"],
            "counts.values": packed["values"],
            **maps,
            "sha256": torch.frombuffer(bytearray(self.digest()), dtype=torch.uint8),
        }

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], config: dict) -> CodePrior:
        """Inverse of ``to_tensors`` + ``config``, also for the dense tables of model files
        written before the counts were stored. A corrupt or inconsistent prior raises
        DiscretaeError."""
        try:
            grid, n_levels, n_codes, kind, n_classes = _checked_config(config)
            maps = int_array(tensors["class_maps"])
            args = (grid, n_levels, n_codes, kind, n_classes, maps)
            if "table" in tensors:
                prior = cls(*args, _dense_table(tensors["table"]))
            else:
                prior = cls(*args, np.zeros((0, n_codes), dtype=np.uint16))
                shape = (prior._n_rows(), n_codes)
                if shape[0] * shape[1] > MAX_ENTRIES:
                    raise ValueError(f"its tables would have {shape[0] * shape[1]} entries")
                counts = unpack_sparse(tensors["counts.gaps"], tensors["counts.values"], shape)
                prior = cls(*args, prior._rebuilt(counts), counts)
                if prior.digest() != bytes(tensors["sha256"].numpy().tobytes()):
                    raise ValueError("its counts, class maps or config do not give its sha256")
            prior._check_shapes()
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
            raise DiscretaeError(
                f"the model's code prior is corrupt or inconsistent: {e}"
            ) from None
        return prior

    def _rebuilt(self, counts: np.ndarray) -> np.ndarray:
        """The uint16 table from stored counts (R, A); ValueError unless they are counts
        a fit could make: every t = 0 position and every level counted the same times."""
        if self.kind == "uniform":
            if counts.any():
                raise ValueError("a uniform prior has counts")
            return CodePrior.uniform(self.grid, self.n_levels, self.n_codes).table
        if float(counts.sum(dtype=np.float64)) >= 2.0**50:  # keeps every sum below exact
            raise ValueError("its counts are too large")
        p = self.grid[0] * self.grid[1]
        per_position = counts[: self._offsets[1]].reshape(p, -1).sum(1)
        per_level = [counts[s:e].sum() for s, e in itertools.pairwise(self._offsets)]
        if per_position.min() < 1 or np.any(per_position != per_position[0]):
            raise ValueError("its positions hold different numbers of training codes")
        if any(total != per_level[0] for total in per_level):
            raise ValueError("its levels hold different numbers of training codes")
        return _context_table(counts, p, self.n_classes)

    def _check_shapes(self) -> None:
        """ValueError unless the table and class maps fit the config."""
        classes = [max(1, c) for c in self.n_classes]
        maps, table = self.class_maps, self.table
        if table.shape != (self._n_rows(), self.n_codes) or table.min() < 1:
            raise ValueError(f"its table has shape {table.shape} or a zero entry")
        if maps.shape != (self.n_levels, self.n_codes) or maps.min() < 0:
            raise ValueError(f"its class maps have shape {maps.shape} or a negative class")
        if any(maps[t].max() >= classes[t] for t in range(self.n_levels)):
            raise ValueError("its class maps name a class beyond n_classes")

    def _n_rows(self) -> int:
        return self._offsets[-1]

    def digest(self) -> bytes:
        """sha256 of the config and tables: part of the model hash of an archive."""
        h = hashlib.sha256(json.dumps(self.config(), sort_keys=True).encode())
        h.update(self.table.astype("<u2").tobytes())
        h.update(self.class_maps.astype("<i4").tobytes())
        return h.digest()

    # ------------------------------------------------------------------ coding
    def slot_rows(self, sym: np.ndarray, i: int, j: int, t: int) -> np.ndarray:
        """Table rows (n,) of slot (i, j, t), from already-known symbols of ``sym``."""
        n = sym.shape[0]
        if self.kind == "uniform":
            return np.zeros(n, dtype=np.int64)
        if t > 0:
            return self.level_rows(sym[:, i, j, t - 1], t)
        c0 = self.n_classes[0]
        cmap = self.class_maps[0]
        left = cmap[sym[:, i, j - 1, 0]] if j > 0 else np.full(n, c0)
        up = cmap[sym[:, i - 1, j, 0]] if i > 0 else np.full(n, c0)
        pos = i * self.grid[1] + j
        return (pos * (c0 + 1) + left) * (c0 + 1) + up

    def level_rows(self, previous: np.ndarray, t: int) -> np.ndarray:
        """Table rows of level t > 0 symbols, from the level t - 1 symbols ``previous`` of
        the same cells (any shape): what ``slot_rows`` gives, for many slots at once."""
        if self.kind == "uniform":
            return np.zeros(previous.shape, dtype=np.int64)
        return self._offsets[t] + self.class_maps[t][previous]

    def encode_block(self, codes: np.ndarray, format3: bool = True) -> np.ndarray:
        """codes (n, h, w, l) ints in [0, A), l <= T -> ANS words (uint32); ``format3``:
        as archive format 3 codes them (two stages, an end mark)."""
        if self.n_codes == 1:
            return np.zeros(0, dtype=np.uint32)
        sym = np.ascontiguousarray(codes, dtype=np.int64)
        order = reversed(slots(self.grid, sym.shape[3]))
        table = self._coder_table
        return encode_slots(
            sym, ((s, (table, self.slot_rows(sym, *s))) for s in order), format3=format3
        )

    def decode_block(
        self, words: np.ndarray, n: int, n_levels: int, format3: bool = True
    ) -> np.ndarray:
        """ANS words -> codes (n, h, w, l) int64, coded as ``encode_block`` with ``format3``
        codes them; raises DiscretaeError unless the words hold exactly these symbols."""
        h, w = self.grid
        sym = np.zeros((n, h, w, n_levels), dtype=np.int64)
        if self.n_codes == 1:
            if len(words):
                raise DiscretaeError("corrupt archive: payload words for a one-code model")
            return sym

        def store(slot, decoded):
            sym[:, slot[0], slot[1], slot[2]] = decoded

        decode_slots(
            words,
            slots(self.grid, n_levels),
            lambda slot: (self._coder_table, self.slot_rows(sym, *slot)),
            store,
            format3=format3,
        )
        return sym

    def max_symbols(self, n_words: int) -> int:
        """The most symbols ``n_words`` ANS words can hold under this prior."""
        if self.n_codes == 1:
            return 2**62
        return max_ans_symbols(n_words)

    def cost_bits(self, codes: np.ndarray) -> float:
        """Information content (bits) of codes (n, h, w, l) under the quantized tables:
        what the payload costs, up to the coder's few words of overhead."""
        sym = np.ascontiguousarray(codes, dtype=np.int64)
        total = 0.0
        sums = self._probs.sum(1)
        for i, j, t in slots(self.grid, sym.shape[3]):
            rows = self.slot_rows(sym, i, j, t)
            p = self._probs[rows, sym[:, i, j, t]] / sums[rows]
            total -= float(np.log2(p).sum())
        return total


def checked_codes(codes, n_codes: int) -> np.ndarray:
    """Training codes as an (N, h, w, T) array with N >= 1 and values in [0, n_codes);
    DiscretaeError otherwise."""
    codes = np.asarray(codes)
    if codes.ndim != 4 or len(codes) == 0:
        raise DiscretaeError(f"codes must be (N, h, w, T) with N >= 1, got {codes.shape}")
    if codes.min() < 0 or codes.max() >= n_codes:
        raise DiscretaeError(
            f"codes must lie in [0, {n_codes}), got [{codes.min()}, {codes.max()}]"
        )
    return codes


def slots(grid, n_levels: int) -> list[tuple[int, int, int]]:
    """The coding order of a block: cells in raster order, levels within a cell."""
    h, w = grid
    return [(i, j, t) for i in range(h) for j in range(w) for t in range(n_levels)]


def _checked_config(config: dict) -> tuple:
    """(grid, n_levels, n_codes, kind, n_classes) of a stored prior's config; ValueError
    unless they are in range."""
    grid = tuple(int(g) for g in config["grid"])
    n_levels, n_codes, kind = int(config["n_levels"]), int(config["n_codes"]), config["kind"]
    n_classes = [int(c) for c in config["n_classes"]]
    if kind not in ("context", "uniform"):
        raise ValueError(f"unknown kind {kind!r}")
    if len(grid) != 2 or min(grid) < 1 or n_levels < 1 or not 1 <= n_codes < TABLE_SCALE:
        raise ValueError(f"grid {grid}, {n_levels} levels of {n_codes} codes")
    if len(n_classes) != n_levels or min(n_classes) < 0 or max(n_classes) > TABLE_BUDGET:
        raise ValueError(f"n_classes {n_classes} for {n_levels} levels")
    return grid, n_levels, n_codes, kind, n_classes


def _dense_table(raw: torch.Tensor) -> np.ndarray:
    """A stored dense table: int16 holding the uint16 bits -> (R, A) uint16."""
    if raw.dtype != torch.int16 or raw.dim() != 2:
        raise ValueError(f"table has dtype {raw.dtype} and {raw.dim()} dims, expected 2-d int16")
    return raw.numpy().view(np.uint16).copy()


def _neighbour_context(classes: np.ndarray, c0: int) -> np.ndarray:
    """classes (n, h, w) in [0, c0) -> (n, h, w) ids ``left * (c0 + 1) + up``, with c0
    standing for "outside the grid"."""
    left = np.full_like(classes, c0)
    left[:, :, 1:] = classes[:, :, :-1]
    up = np.full_like(classes, c0)
    up[:, 1:, :] = classes[:, :-1, :]
    return left * (c0 + 1) + up
