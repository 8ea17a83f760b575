"""What every quantizer shares: the base class, code keys, perplexity, the global batch
mean, float32 math."""

from __future__ import annotations

import torch
from torch import nn

from discretae.core import distributed

_HASH_PRIME = 2**31 - 1


def fp32_math(z: torch.Tensor):
    """Context that turns autocast off, so codebook math stays float32."""
    return torch.autocast(device_type=z.device.type, enabled=False)


class Quantizer(nn.Module):
    """The base of every quantizer (see :mod:`discretae.quantizers` for the contract).

    A subclass sets ``dim`` (the latent dimension D), ``code_tail`` (the code axes after
    the latent's leading ones: () for one index, (G,) for groups, (B,) for bits) and
    ``code_dtype``, and implements ``forward``, ``encode``, ``codes_to_latent`` and
    ``code_keys``.
    """

    dim: int
    code_tail: tuple[int, ...] = ()
    code_dtype: torch.dtype = torch.int64
    annealed: bool = False  # True where set_progress changes what training optimises

    def set_progress(self, frac: float) -> None:
        """Training progress in [0, 1]; only annealed quantizers use it."""

    def check_latent(self, z: torch.Tensor) -> None:
        """Refuse a latent whose last axis is not D."""
        if z.ndim < 1 or z.shape[-1] != self.dim:
            raise ValueError(f"z must have shape (..., {self.dim}), got {tuple(z.shape)}")


def perplexity_from_counts(counts: torch.Tensor) -> torch.Tensor:
    """counts: (K,) -> exp(entropy) of the normalised counts, a float32 scalar."""
    counts = counts.float()
    p = counts / counts.sum().clamp(min=1.0)
    return torch.exp(-(p * p.clamp(min=1e-12).log()).sum())


def code_keys(rows: torch.Tensor, base: int) -> torch.Tensor:
    """rows: (T, W) integers in [0, base) -> (T,) int64 keys, equal for equal rows.

    Exact (mixed radix) when base**W < 2**62, else a polynomial hash modulo 2**31 - 1,
    whose rare collisions can only undercount distinct codes.
    """
    rows = rows.long()
    exact = rows.shape[1] * (base - 1).bit_length() < 62
    key = torch.zeros(rows.shape[0], dtype=torch.int64, device=rows.device)
    for j in range(rows.shape[1]):
        key = key * base + rows[:, j]
        if not exact:
            key = key % _HASH_PRIME
    return key


def batch_mean(x: torch.Tensor) -> torch.Tensor:
    """x: (T, ...) -> mean over the T rows of the global batch: this rank's alone, or all
    ranks' under DDP (one differentiable all-reduce of the sums and the row count)."""
    if not distributed.is_dist():
        return x.mean(0)
    sums = x.sum(0).reshape(-1)
    total = distributed.global_sum(torch.cat([sums, sums.new_tensor([x.shape[0]])]))
    return (total[:-1] / total[-1]).view(x.shape[1:])


def code_stats(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """keys: (T,) int64 -> (distinct codes, perplexity) of this batch."""
    _, counts = torch.unique(keys, return_counts=True)
    return torch.tensor(counts.numel(), device=keys.device), perplexity_from_counts(counts)


def alphabet_size(model: str, n_codes: int) -> int:
    """How many distinct values one code position takes: 2 for binary codes (one bit per
    position), else the codebook size."""
    return 2 if model == "binary" else int(n_codes)
