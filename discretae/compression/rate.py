"""Rate-aware code choice (``compress --rate-weight w``): an encoder-only trade of bytes
for quality, for vq and rvq models with a code prior (context tables or learned).

The nearest code is not always the best one to store: a code almost as near that the
prior finds far more likely costs fewer bits. For every cell, level by level (level t
works on the residual the levels before it left, as the quantizer does), the encoder
takes the ``CANDIDATES`` nearest codebook rows (the exact top-k search) and keeps the
one that minimises::

    ||r - c||^2  +  lambda_t * bits(c | context)

where bits are read from the prior in the context the decoder will see (context tables:
the left and upper level-0 codes for level 0, chosen earlier in raster order, and the
cell's code one level up for t > 0; a learned prior: its causal context, level by level
in raster order), and ``lambda_t = w * s_t``, ``s_t`` the mean
squared distance from each row of level t's codebook to its nearest other row: a
scale of that level's quantisation cells, so one ``w`` means about the same on every
level and model. Each choice is greedy: it does not count what it does to the contexts
of later codes. ``w = 0`` keeps the nearest codes (what ``encode`` gives).

The archive format and the decoder do not change: the archive holds valid codes, only
chosen differently.

Measured on Fashion-MNIST (rvq 7x7, 256 codes, 4 levels, 12 epochs; 1000 test images):
two levels go from 69.1 B at 27.40 dB (w = 0) to 65.4 B at 27.34 dB (w = 0.02) and
61.4 B at 27.10 dB (w = 0.08); three levels from 108.6 B at 29.90 dB to 96.7 B at
29.60 dB (w = 0.08): a dB given up for every 30-60 B saved, where WebP saves about
11.5 B per dB (benchmarks/rate_distortion.py, --rate-weights).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from discretae.core.errors import DiscretaeError
from discretae.kernels import nearest_codes

CANDIDATES = 8  # nearest rows considered per cell and level
MAX_RATE_WEIGHT = 100.0


def check_rate_weight(weight) -> float:
    """A rate weight as a float in [0, MAX_RATE_WEIGHT]; DiscretaeError otherwise."""
    try:
        w = float(weight)
    except (TypeError, ValueError):
        raise DiscretaeError(f"rate_weight must be a number, got {weight!r}") from None
    if isinstance(weight, bool) or not math.isfinite(w) or not 0 <= w <= MAX_RATE_WEIGHT:
        raise DiscretaeError(f"rate_weight must lie in [0, {MAX_RATE_WEIGHT:g}], got {weight!r}")
    return w


def codebooks(model) -> list[torch.Tensor]:
    """The codebook (K, D) of every level of a vq or rvq network; DiscretaeError for
    other kinds."""
    kind = model.config["kind"]
    if kind == "rvq":
        return [layer.codebook.detach().float() for layer in model.quantizer.layers]
    if kind == "vq":
        return [model.quantizer.codebook.detach().float()]
    raise DiscretaeError(
        f"a rate weight chooses among codebook rows: it needs a vq or rvq model, not {kind!r}"
    )


def cell_scale(codebook: torch.Tensor) -> float:
    """Mean squared distance from each row to its nearest other row (float64)."""
    cb = codebook.double().cpu()
    if len(cb) < 2:
        return 0.0
    d = torch.cdist(cb, cb).square_()
    d.fill_diagonal_(math.inf)
    return float(d.min(1).values.mean())


class RateAwareEncoder:
    """Chooses codes for a codec (:class:`~discretae.compression.codec.Codec`) with a
    rate weight ``w`` > 0, from its network and prior (module docstring)."""

    def __init__(self, model, prior, weight: float) -> None:
        if prior.kind not in ("context", "learned"):
            raise DiscretaeError("a rate weight needs the model's code prior (fit adds one)")
        self.model, self.prior = model, prior
        self.device = next(model.parameters()).device
        self.books = [cb.to(self.device) for cb in codebooks(model)]
        self.lambdas = [weight * cell_scale(cb) for cb in self.books]
        self.bits = None
        if prior.kind == "context":
            table = prior.table.astype(np.float64)
            self.bits = np.log2(table.sum(1, keepdims=True)) - np.log2(table)

    def _slot_bits(self, sym: np.ndarray, i: int, j: int, t: int, cand: np.ndarray):
        """Bits (n, k) of the candidate codes ``cand`` of slot (i, j, t) in its context."""
        if self.bits is not None:
            return self.bits[self.prior.slot_rows(sym, i, j, t)[:, None], cand]
        table = self.prior.slot_table(sym, i, j, t)
        picked = np.take_along_axis(table, cand, 1)
        return np.log2(table.sum(1, keepdims=True)) - np.log2(picked)

    @torch.inference_mode()
    def symbols(self, x: torch.Tensor) -> np.ndarray:
        """x (B, C, H, W) float in [0, 1] -> symbols (B, h, w, T) int64."""
        z = self.model.latent(x.to(self.device, torch.float32)).float()
        n, (h, w) = len(z), self.prior.grid
        z = z.reshape(n, h, w, z.shape[-1])  # a global latent is one 1 x 1 cell
        sym = np.zeros((n, h, w, len(self.books)), dtype=np.int64)
        residual = z
        rows_of = np.arange(n)
        for t, (book, lam) in enumerate(zip(self.books, self.lambdas, strict=True)):
            k = min(CANDIDATES, len(book))
            idx, dist = nearest_codes(residual, book, k)
            idx, dist = idx.cpu().numpy(), dist.cpu().numpy().astype(np.float64)
            if t > 0 and self.bits is not None:  # context tables: the code one level up
                rows = self.prior.level_rows(sym[..., t - 1], t)
                cost = dist + lam * self.bits[rows[..., None], idx]
                sym[..., t] = np.take_along_axis(idx, cost.argmin(-1)[..., None], -1)[..., 0]
            else:  # the context holds codes chosen before: in raster order
                for i in range(h):
                    for j in range(w):
                        cand = idx[:, i, j]
                        cost = dist[:, i, j] + lam * self._slot_bits(sym, i, j, t, cand)
                        sym[:, i, j, t] = cand[rows_of, cost.argmin(1)]
            chosen = torch.from_numpy(sym[..., t]).to(self.device)
            residual = residual - torch.nn.functional.embedding(chosen, book)
        return sym
