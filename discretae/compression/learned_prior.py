"""A learned code prior: a small causal network over the code grid, run in integers.

As VQ-VAE pairs its codes with an autoregressive prior, this prior gives each symbol
``(i, j, t)`` of a code grid ``(h, w, T)`` a distribution from the symbols decoded
before it (cells in raster order, levels within a cell, as
:class:`~discretae.compression.prior.CodePrior` codes them):

- the codes of six neighbouring cells already decoded (left, above, above-left,
  above-right, two to the left, two above) at levels ``t - 3 .. t``;
- the cell's own codes at levels ``t - 4 .. t - 1``;
- the cell's position.

One network per level: every context code is embedded (``EMBED`` numbers, one table per
source level, one more row for "outside the grid"), the embeddings and a position vector
feed two hidden layers of ``HIDDEN`` ReLU units, and a linear layer gives one logit per
code. It is trained in float (Adam, cross-entropy, on the training codes) and then
quantized after training: int8 embeddings and weights, activations held as integers in
[0, 255], integer biases, per-unit integer multipliers and a right shift between layers,
logits in steps of ``1 / LOGIT_STEPS`` nat and an exponential read from a stored integer
table. Every step of inference is exact integer arithmetic
(:mod:`~discretae.compression.prior_network`): the first layer sums per-column tables
and the two dense layers multiply int8 weights by activations in [0, 255], in float32
with every partial sum an integer below 2**24 (exact in any order); the rescaling runs
in float64 on integers below 2**53. So the encoder and the decoder get the same integer
distribution on any machine, which ``CodePrior``'s quantization (``quantize_rows``, as
``prior_network.coder_rows``) turns into the coder's rows.

Measured on Fashion-MNIST codes (rvq 7x7, 256 codes, 4 levels, 12 epochs; the network
trained on 54k train images' codes, 2,000 test images, real archives;
``benchmarks/rate_distortion.py --prior auto``): 24.4 / 59.8 / 97.2 / 136.5 bytes per image
for 1 / 2 / 3 / 4 levels, where the context tables take 30.9 / 69.1 / 108.4 / 149.5: the
first level gains most (21%; its tables see two neighbours through 16 classes), the
others 4-7%. It adds 0.2 MB to the model file (1.63 MB in all) and about 0.25 ms per image
per level to decoding on one CPU thread (a network call per slot, over all images).
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import torch
from torch.nn import functional as F

from discretae.compression.ans import CoderTable, decode_slots, encode_slots, max_ans_symbols
from discretae.compression.prior import checked_codes, slots
from discretae.compression.prior_network import (
    EMBED,
    EXP_SCALE,
    EXP_TABLE,
    HIDDEN,
    LOGIT_STEPS,
    PAD,
    SHIFT,
    IntLevel,
    LevelNet,
    all_contexts,
    checked_level,
    columns,
    context,
    exp_table,
    padded,
    quantized,
)
from discretae.core.errors import DiscretaeError

BATCH = 4096
MIN_STEPS, MAX_STEPS, EPOCHS = 300, 2400, 3
MAX_SYMBOLS = 2**22  # training symbols per level held at once (images drawn beyond)


class LearnedPrior:
    """A learned prior over code symbols ``(h, w, T)`` in ``[0, A)``, with the interface of
    :class:`~discretae.compression.prior.CodePrior` (``encode_block``, ``decode_block``,
    ``cost_bits``, ``max_symbols``, ``digest``, ``config``, ``to_tensors``)."""

    kind = "learned"

    def __init__(
        self, grid, n_levels: int, n_codes: int, levels: list[dict], exp=None, choice=None
    ):
        self.grid = (int(grid[0]), int(grid[1]))
        self.n_levels, self.n_codes = int(n_levels), int(n_codes)
        self.exp = exp_table() if exp is None else exp
        self.arrays = levels
        # how fit_prior chose this prior: stored in the config, outside the digest
        self.choice: dict | None = choice
        self.nets = []
        for t, arrays in enumerate(levels):
            arrays = {**arrays, "exp": self.exp}
            self.nets.append(IntLevel(arrays, columns(t)))

    # ------------------------------------------------------------------ building
    @classmethod
    def fit(
        cls,
        codes: np.ndarray,
        n_codes: int,
        *,
        seed: int = 0,
        steps: int | None = None,
        progress=None,
    ) -> LearnedPrior:
        """Train the level networks on training codes (N, h, w, T) and quantize them.

        ``steps`` per level: by default three epochs of ``BATCH`` symbols, within
        [MIN_STEPS, MAX_STEPS]. Codes of more than ``MAX_SYMBOLS`` symbols a level are
        first cut to a seeded draw of whole images. ``progress(t, step, steps, loss)`` is
        called as it goes.
        """
        codes = checked_codes(codes, n_codes)
        if n_codes < 2:
            raise DiscretaeError("a learned prior needs at least 2 codes")
        n, h, w, n_levels = codes.shape
        if n * h * w > MAX_SYMBOLS:  # more than the steps can visit: a seeded subset
            keep = np.random.default_rng(seed).choice(n, MAX_SYMBOLS // (h * w), replace=False)
            codes = codes[np.sort(keep)]
            n = len(codes)
        gen = torch.Generator().manual_seed(seed)
        torch_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        pos = torch.arange(h * w).repeat(n)
        y_all = torch.from_numpy(codes.astype(np.int64).reshape(n * h * w, n_levels))
        levels = []
        small = np.int16 if n_codes < 2**15 - 1 else np.int32
        try:
            for t in range(n_levels):
                ctx = torch.from_numpy(
                    all_contexts(codes, n_codes, t).reshape(n * h * w, -1).astype(small)
                )
                y = y_all[:, t].contiguous()
                net = LevelNet(n_codes, columns(t), h * w)
                total = steps or min(MAX_STEPS, max(MIN_STEPS, EPOCHS * len(y) // BATCH))
                opt = torch.optim.Adam(net.parameters(), 2e-3)
                sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=total)
                for step in range(total):
                    b = torch.randint(len(y), (min(BATCH, len(y)),), generator=gen)
                    loss = F.cross_entropy(net(ctx[b].long(), pos[b]), y[b])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    sched.step()
                    if progress is not None:
                        progress(t, step, total, loss.item())
                sample = torch.randperm(len(y), generator=gen)[:65536]
                levels.append(quantized(net, ctx[sample].long(), pos[sample]))
        finally:
            torch.random.set_rng_state(torch_state)
        return cls((h, w), n_levels, n_codes, levels)

    # ------------------------------------------------------------------ storage
    def config(self) -> dict:
        return {
            "kind": self.kind,
            "grid": list(self.grid),
            "n_levels": self.n_levels,
            "n_codes": self.n_codes,
            "embed": EMBED,
            "hidden": HIDDEN,
            "logit_steps": LOGIT_STEPS,
            "shift": SHIFT,
            **({"choice": self.choice} if self.choice else {}),
        }

    def to_tensors(self) -> dict[str, torch.Tensor]:
        out = {"exp": torch.from_numpy(self.exp.astype(np.int64))}
        for t, arrays in enumerate(self.arrays):
            for name in IntLevel.NAMES:
                out[f"{t}.{name}"] = torch.from_numpy(np.ascontiguousarray(arrays[name]))
        out["sha256"] = torch.frombuffer(bytearray(self.digest()), dtype=torch.uint8)
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], config: dict) -> LearnedPrior:
        """Inverse of ``to_tensors`` + ``config``; DiscretaeError for anything a fit could
        not have written (shapes, dtypes, ranges, sha256)."""
        try:
            grid = tuple(int(g) for g in config["grid"])
            n_levels, n_codes = int(config["n_levels"]), int(config["n_codes"])
            fixed = (config["embed"], config["hidden"], config["logit_steps"], config["shift"])
            if fixed != (EMBED, HIDDEN, LOGIT_STEPS, SHIFT):
                raise ValueError(f"its network sizes {fixed} are not this version's")
            if len(grid) != 2 or min(grid) < 1 or n_levels < 1 or not 2 <= n_codes <= 2**15:
                raise ValueError(f"grid {grid}, {n_levels} levels of {n_codes} codes")
            levels = [
                checked_level(tensors, t, n_codes, grid[0] * grid[1]) for t in range(n_levels)
            ]
            exp = tensors["exp"].numpy()
            if exp.dtype != np.int64 or exp.shape != (EXP_TABLE,):
                raise ValueError("its exponential table has the wrong shape")
            if exp.min() < 0 or exp.max() > EXP_SCALE or exp[0] < 1:
                raise ValueError("its exponential table is out of range")
            prior = cls(grid, n_levels, n_codes, levels, exp.copy(), config.get("choice"))
            if prior.digest() != bytes(tensors["sha256"].numpy().tobytes()):
                raise ValueError("its tensors or config do not give its sha256")
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
            raise DiscretaeError(f"the model's learned code prior is corrupt: {e}") from None
        return prior

    def digest(self) -> bytes:
        cfg = {k: v for k, v in self.config().items() if k != "choice"}
        h = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode())
        h.update(self.exp.astype("<i8").tobytes())
        for arrays in self.arrays:
            for name in IntLevel.NAMES:
                a = np.ascontiguousarray(arrays[name])
                h.update(f"{name}|{a.dtype.str}|{a.shape}".encode())
                h.update(a.tobytes())
        return h.digest()

    # ------------------------------------------------------------------ coding
    def _rows_by_slot(self, sym: np.ndarray, order):
        """(slot, coder rows (n, A)) for the slots ``order`` of known codes (n, h, w, l):
        one slot at a time over every image, as the decoder sees them."""
        pad = padded(sym, self.n_codes)
        w = self.grid[1]
        pos = np.empty(len(sym), dtype=np.int64)
        for i, j, t in order:
            pos.fill(i * w + j)
            yield (i, j, t), self.nets[t].rows(context(pad, columns(t), i, j), pos)

    def _coder_rows(self, rows_by_slot):
        """(slot, (CoderTable, row indices)) for ``encode_slots`` from (slot, rows)."""
        for slot, rows in rows_by_slot:
            yield slot, (CoderTable(rows), np.arange(len(rows)))

    def _all_rows(self, sym: np.ndarray) -> list[np.ndarray]:
        """Per level t < l, the coder rows (n, h, w, A) of every symbol of known codes."""
        n, h, w, levels = sym.shape
        out = [np.empty((n, h, w, self.n_codes)) for _ in range(levels)]
        for (i, j, t), rows in self._rows_by_slot(sym, slots(self.grid, levels)):
            out[t][:, i, j] = rows
        return out

    def encode_block(self, codes: np.ndarray, format3: bool = True) -> np.ndarray:
        """codes (n, h, w, l) ints in [0, A), l <= T -> ANS words (uint32); ``format3``:
        as archive format 3 codes them (two stages, an end mark)."""
        sym = np.ascontiguousarray(codes, dtype=np.int64)
        order = reversed(slots(self.grid, sym.shape[3]))
        return encode_slots(sym, self._coder_rows(self._rows_by_slot(sym, order)), format3=format3)

    def decode_block(
        self, words: np.ndarray, n: int, n_levels: int, format3: bool = True
    ) -> np.ndarray:
        """ANS words -> codes (n, h, w, l) int64, coded as ``encode_block`` with ``format3``
        codes them; DiscretaeError unless the words hold exactly these symbols."""
        h, w = self.grid
        # "outside" everywhere until decoded: a context reads only symbols decoded before
        pad = np.full((n, h + PAD, w + 2 * PAD, n_levels), self.n_codes, dtype=np.int64)

        def rows_of(slot):
            i, j, t = slot
            rows = self.nets[t].rows(context(pad, columns(t), i, j), np.full(n, i * w + j))
            return CoderTable(rows), np.arange(n)

        def store(slot, decoded):
            pad[:, PAD + slot[0], PAD + slot[1], slot[2]] = decoded

        decode_slots(words, slots(self.grid, n_levels), rows_of, store, format3=format3)
        return pad[:, PAD:, PAD : PAD + w].copy()

    def slot_table(self, sym: np.ndarray, i: int, j: int, t: int) -> np.ndarray:
        """Coder rows (n, A) of slot (i, j, t) from the symbols of ``sym`` (n, h, w, l)
        decoded before it (the rate-aware encoder's view)."""
        n, h, w, _ = sym.shape
        outside = np.full(n, self.n_codes, dtype=np.int64)
        ctx = np.stack(
            [
                sym[:, i + di, j + dj, lv] if i + di >= 0 and 0 <= j + dj < w else outside
                for di, dj, lv in columns(t)
            ],
            1,
        )
        return self.nets[t].rows(ctx, np.full(n, i * w + j))

    def max_symbols(self, n_words: int) -> int:
        return max_ans_symbols(n_words)

    def cost_bits(self, codes: np.ndarray) -> float:
        """Information content (bits) of codes (n, h, w, l) under the integer network."""
        sym = np.ascontiguousarray(codes, dtype=np.int64)
        total = 0.0
        every = np.arange(len(sym))
        for (i, j, t), rows in self._rows_by_slot(sym, slots(self.grid, sym.shape[3])):
            p = rows[every, sym[:, i, j, t]] / rows.sum(1)
            total -= float(np.log2(p).sum())
        return total


def bits_per_symbol(prior, codes: np.ndarray) -> list[float]:
    """Mean bits per symbol of each level of codes (n, h, w, T) under ``prior``."""
    n, h, w, levels = codes.shape
    out, before = [], 0.0
    for t in range(levels):
        total = prior.cost_bits(codes[..., : t + 1])
        out.append((total - before) / (n * h * w))
        before = total
    return out
