"""Binary codes: each unit thresholded at 0.5, straight-through."""

from __future__ import annotations

import torch

from discretae.core.checks import check_int
from discretae.quantizers.base import Quantizer, batch_mean, code_keys, code_stats, fp32_math


class BinaryQuantizer(Quantizer):
    """B binary units: sigmoid, then threshold at 0.5, with a straight-through gradient.

    Args:
        n_bits: number of bits B; the latent dimension is B too.
        stochastic: in training, draw each bit as Bernoulli(sigmoid(z)) instead of
            thresholding; inference always thresholds.
        balance_weight: weight of mean over bits of (batch mean of sigmoid(z) - 0.5)^2,
            which keeps every bit in use.

    Codes are uint8 (..., B), exactly ``sigmoid(z) > 0.5`` at inference. ``usage`` in the
    stats counts the ones of each bit (B,).
    """

    code_dtype = torch.uint8

    def __init__(self, n_bits: int, *, stochastic: bool = False, balance_weight: float = 0.1):
        super().__init__()
        check_int("n_bits", n_bits)
        self.n_bits = self.dim = n_bits
        self.stochastic, self.balance_weight = stochastic, balance_weight
        self.code_tail = (n_bits,)

    def forward(self, z: torch.Tensor):
        """z: (..., B) -> (quantized (..., B) in {0, 1}, codes (..., B) uint8, aux_loss, stats)."""
        self.check_latent(z)
        with fp32_math(z):
            p = torch.sigmoid(z.float())
            if self.training and self.stochastic:
                bits = (torch.rand_like(p) < p).float()
            else:
                bits = (p > 0.5).float()
            q = bits + (p - p.detach())  # exactly the bits forward, sigmoid gradient back
            flat_p = p.reshape(-1, self.n_bits)
            mean_p = batch_mean(flat_p) if self.training else flat_p.mean(0)
            aux = self.balance_weight * (mean_p - 0.5).pow(2).mean()
        codes = bits.to(torch.uint8)
        n_used, perplexity = code_stats(self.code_keys(codes))
        stats = {
            "usage": bits.detach().reshape(-1, self.n_bits).sum(0),
            "perplexity": perplexity,
            "n_used": n_used,
        }
        return q.to(z.dtype), codes, aux, stats

    @torch.no_grad()
    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """z: (..., B) -> codes (..., B) uint8, ``sigmoid(z) > 0.5``."""
        self.check_latent(z)
        with fp32_math(z):
            return (torch.sigmoid(z.float()) > 0.5).to(torch.uint8)

    def codes_to_latent(self, codes: torch.Tensor) -> torch.Tensor:
        """codes: (..., B) in {0, 1} -> latents (..., B) float32."""
        return codes.to(torch.float32)

    def code_keys(self, codes: torch.Tensor) -> torch.Tensor:
        return code_keys(codes.reshape(-1, self.n_bits), 2)
