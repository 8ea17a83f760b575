"""Gumbel-softmax: a one-hot code per group, trained through the relaxed choice."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from discretae.core.checks import check_int
from discretae.kernels import nearest_code
from discretae.quantizers.base import Quantizer, batch_mean, code_keys, code_stats, fp32_math


def code_logits(zg: torch.Tensor, cb: torch.Tensor) -> torch.Tensor:
    """zg (T, G, Dg) float32, codebooks cb (G, K, Dg) -> (T, G, K): minus the squared
    distances of each group's latent to its codebook's rows (the Gumbel code's logits)."""
    return (
        2.0 * torch.einsum("tgd,gkd->tgk", zg, cb)
        - (cb * cb).sum(-1).unsqueeze(0)
        - (zg * zg).sum(-1, keepdim=True)
    )


class GumbelQuantizer(Quantizer):
    """One-hot codes trained through a hard straight-through Gumbel-softmax.

    The logits of a latent vector are its negative squared distances to a learned
    codebook, so the hard, noise-free choice at inference is exactly ``nearest_code``.

    Args:
        n_codes: categories K per group.
        dim: latent dimension D, split into ``groups`` equal parts.
        groups: independent categorical choices per latent position, each with its own
            codebook (K, D / groups); codes get a trailing axis of size ``groups`` when > 1.
        tau_start, tau_end: softmax temperature at the start and end of training;
            ``set_progress(frac)`` anneals it geometrically.
        kl_weight: weight of KL(mean assignment of the batch || uniform), which keeps
            the model from collapsing onto a few codes.
        hard: one-hot forward values (True) or the soft relaxation (False) in training.
    """

    annealed = True  # the temperature falls: the loss may rise by design

    def __init__(
        self,
        n_codes: int,
        dim: int,
        *,
        groups: int = 1,
        tau_start: float = 1.0,
        tau_end: float = 0.3,
        kl_weight: float = 0.1,
        hard: bool = True,
    ) -> None:
        super().__init__()
        check_int("n_codes", n_codes)
        check_int("dim", dim)
        check_int("groups", groups)
        if dim % groups:
            raise ValueError(f"dim={dim} must be a multiple of groups={groups}")
        if not (tau_start > 0 and tau_end > 0):
            raise ValueError(f"temperatures must be > 0, got {tau_start!r} and {tau_end!r}")
        self.n_codes, self.dim, self.groups = n_codes, dim, groups
        self.tau_start, self.tau_end, self.tau = tau_start, tau_end, tau_start
        self.kl_weight, self.hard = kl_weight, hard
        self.code_tail = (groups,) if groups > 1 else ()
        # unit-norm-scale rows keep the initial logits O(1), so the softmax starts soft
        self.codebook = nn.Parameter(
            torch.randn(groups, n_codes, dim // groups) / (dim // groups) ** 0.5
        )

    def set_progress(self, frac: float) -> None:
        """frac in [0, 1]: how far training has come; sets the temperature."""
        frac = min(max(float(frac), 0.0), 1.0)
        self.tau = self.tau_start * (self.tau_end / self.tau_start) ** frac

    def _shape_codes(self, idx: torch.Tensor, lead: torch.Size) -> torch.Tensor:
        """idx: (T, G) -> (*lead) or (*lead, G)."""
        return idx.view(*lead, *self.code_tail)

    def forward(self, z: torch.Tensor):
        """z: (..., D) -> (quantized (..., D), codes (...) or (..., G) int64, aux_loss, stats)."""
        self.check_latent(z)
        lead = z.shape[:-1]
        with fp32_math(z):
            zg = z.float().reshape(-1, self.groups, self.dim // self.groups)  # (T, G, Dg)
            cb = self.codebook
            logits = self._logits(zg)
            if self.training:
                gumbel = -torch.empty_like(logits).exponential_().log()
                y_soft = torch.softmax((logits + gumbel) / self.tau, dim=-1)
                idx = y_soft.argmax(-1)
                y = y_soft
                if self.hard:
                    y = F.one_hot(idx, self.n_codes).to(y_soft) - y_soft.detach() + y_soft
                q = torch.einsum("tgk,gkd->tgd", y, cb)
            else:
                idx = self._nearest(zg)
                q = self._gather(idx)
            p = torch.softmax(logits, dim=-1)
            mean_p = batch_mean(p) if self.training else p.mean(0)  # (G, K)
            kl = (mean_p * (mean_p * self.n_codes).clamp(min=1e-12).log()).sum(-1).mean()
            aux = self.kl_weight * kl
        codes = self._shape_codes(idx, lead)
        n_used, perplexity = code_stats(self.code_keys(codes))
        stats = {
            "usage": torch.bincount(idx.reshape(-1), minlength=self.n_codes).float(),
            "perplexity": perplexity,
            "n_used": n_used,
        }
        return q.reshape(z.shape).to(z.dtype), codes, aux, stats

    def _logits(self, zg: torch.Tensor) -> torch.Tensor:
        """zg: (T, G, Dg) float32 -> (T, G, K) minus squared distances to each group's codes."""
        return code_logits(zg, self.codebook)

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        """z: (..., D) -> (..., G, K) float32 logits of the code choice (differentiable);
        their softmax is the code distribution without Gumbel noise."""
        self.check_latent(z)
        with fp32_math(z):
            zg = z.float().reshape(-1, self.groups, self.dim // self.groups)
            return self._logits(zg).view(*z.shape[:-1], self.groups, self.n_codes)

    def _nearest(self, zg: torch.Tensor) -> torch.Tensor:
        """zg: (T, G, Dg) -> (T, G) nearest code per group."""
        cb = self.codebook.detach()
        zg = zg.detach()
        return torch.stack([nearest_code(zg[:, g], cb[g])[0] for g in range(self.groups)], 1)

    def _gather(self, idx: torch.Tensor) -> torch.Tensor:
        """idx: (T, G) -> (T, G, Dg) codebook rows."""
        g = torch.arange(self.groups, device=idx.device)
        return self.codebook[g.unsqueeze(0), idx]

    @torch.no_grad()
    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """z: (..., D) -> codes (...) or (..., G) int64: the nearest code of each group."""
        self.check_latent(z)
        with fp32_math(z):
            zg = z.detach().float().reshape(-1, self.groups, self.dim // self.groups)
            return self._shape_codes(self._nearest(zg), z.shape[:-1])

    def codes_to_latent(self, codes: torch.Tensor) -> torch.Tensor:
        """codes: (...) or (..., G) int64 in [0, K) -> latents (..., D) float32."""
        lead = codes.shape[: codes.ndim - len(self.code_tail)]
        idx = codes.long().reshape(-1, self.groups)
        return self._gather(idx).reshape(*lead, self.dim)

    def code_keys(self, codes: torch.Tensor) -> torch.Tensor:
        return code_keys(codes.reshape(-1, self.groups), self.n_codes)
