"""VQ-VAE: each latent vector becomes the index of its nearest codebook row."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from discretae.core import distributed
from discretae.core.checks import check_int
from discretae.kernels import nearest_code, nearest_code_with_sums
from discretae.quantizers.base import Quantizer, fp32_math, perplexity_from_counts
from discretae.quantizers.kmeans import KMeans


class VectorQuantizer(Quantizer):
    """VQ-VAE quantizer: each latent vector becomes the index of its nearest codebook row.

    Args:
        n_codes: codebook size K.
        dim: latent dimension D.
        commitment: weight of ``||z - sg(q)||^2`` that keeps the encoder near its code.
        ema: update the codebook as an exponential moving average of the vectors
            assigned to each code (sums and counts from ``nearest_code_with_sums``);
            False trains the codebook by gradient with the loss ``||sg(z) - q||^2``.
        decay: EMA decay; 0.9 (a memory of about 10 steps) suits runs of a few hundred
            to a few thousand steps, longer runs may prefer 0.99.
        eps: Laplace smoothing of the EMA counts.
        kmeans_init: set the codebook by k-means on the first training batch.
        kmeans_iters: Lloyd iterations of that initialisation.
        dead_code_threshold: a code whose EMA count (vectors per batch) falls below this
            is re-seeded from a random vector of the current batch; 0 turns it off.

    Codes are int64 (...) for z (..., D).
    """

    def __init__(
        self,
        n_codes: int,
        dim: int,
        *,
        commitment: float = 0.25,
        ema: bool = True,
        decay: float = 0.9,
        eps: float = 1e-5,
        kmeans_init: bool = True,
        kmeans_iters: int = 10,
        dead_code_threshold: float = 1.0,
    ) -> None:
        super().__init__()
        check_int("n_codes", n_codes)
        check_int("dim", dim)
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must lie in (0, 1), got {decay!r}")
        if commitment < 0 or eps < 0 or dead_code_threshold < 0:
            raise ValueError("commitment, eps and dead_code_threshold must be >= 0")
        self.n_codes, self.dim = n_codes, dim
        self.commitment, self.ema, self.decay, self.eps = commitment, ema, decay, eps
        self.kmeans_iters = kmeans_iters
        self.dead_code_threshold = dead_code_threshold
        init = torch.randn(n_codes, dim)
        if ema:
            self.register_buffer("codebook", init)
            self.register_buffer("ema_sum", init.clone())
        else:
            self.codebook = nn.Parameter(init)
        # EMA of per-batch counts: drives the EMA update and dead-code revival alike
        self.register_buffer("ema_count", torch.ones(n_codes))
        self.register_buffer("initialized", torch.tensor(not kmeans_init))

    @torch.no_grad()
    def set_codebook(self, codebook: torch.Tensor, counts: torch.Tensor | None = None) -> None:
        """Replace the codebook (K, D); ``counts`` (K,) seed the EMA counts (default 1)."""
        counts = torch.ones(self.n_codes) if counts is None else counts
        counts = counts.to(self.ema_count)
        self.codebook.data.copy_(codebook)
        self.ema_count.copy_(counts)
        if self.ema:
            self.ema_sum.copy_(self.codebook * counts.unsqueeze(1))
        self.initialized.fill_(True)

    @torch.no_grad()
    def _init_from(self, flat: torch.Tensor) -> None:
        flat = distributed.all_gather_rows(flat)  # the global batch, on every rank
        if distributed.is_main():
            self._init_from_rows(flat)
        self._sync_codebook()

    @torch.no_grad()
    def _sync_codebook(self) -> None:
        """Give every rank rank 0's codebook and EMA statistics (a no-op alone)."""
        if self.ema:
            distributed.broadcast_(self.codebook.data, self.ema_count, self.ema_sum)
        else:
            distributed.broadcast_(self.codebook.data, self.ema_count)
        self.initialized.fill_(True)

    @torch.no_grad()
    def _init_from_rows(self, flat: torch.Tensor) -> None:
        if flat.shape[0] >= self.n_codes:
            seed = int(torch.randint(2**31 - 1, (1,)))
            km = KMeans(self.n_codes, n_init=1, max_iter=self.kmeans_iters, random_state=seed)
            km.fit(flat)
            counts = torch.bincount(km.labels_, minlength=self.n_codes).float()
            self.set_codebook(km.cluster_centers_, counts.clamp(min=1.0))
        else:  # fewer vectors than codes: sample with replacement, jitter duplicates apart
            pick = torch.randint(flat.shape[0], (self.n_codes,), device=flat.device)
            self.set_codebook(flat[pick] + 1e-3 * torch.randn_like(flat[pick]))

    @torch.no_grad()
    def _revive_dead_codes(self, flat: torch.Tensor) -> None:
        dead = torch.nonzero(self.ema_count < self.dead_code_threshold).squeeze(1)
        if dead.numel() == 0:  # ema_count is equal on all ranks, so all return together
            return
        flat = distributed.all_gather_rows(flat)
        if distributed.is_main():
            pick = torch.randint(flat.shape[0], (dead.numel(),), device=flat.device)
            self.codebook.data[dead] = flat[pick]
            self.ema_count[dead] = self.dead_code_threshold
            if self.ema:
                self.ema_sum[dead] = flat[pick] * self.dead_code_threshold
        self._sync_codebook()

    @torch.no_grad()
    def _ema_update(self, sums: torch.Tensor, counts: torch.Tensor) -> None:
        distributed.all_reduce_(sums, counts)  # global batch statistics under DDP
        self.ema_count.mul_(self.decay).add_(counts, alpha=1.0 - self.decay)
        if not self.ema:
            return
        self.ema_sum.mul_(self.decay).add_(sums, alpha=1.0 - self.decay)
        n = self.ema_count.sum()
        smoothed = (self.ema_count + self.eps) / (n + self.n_codes * self.eps) * n
        self.codebook.copy_(self.ema_sum / smoothed.unsqueeze(1))

    def forward(self, z: torch.Tensor):
        """z: (..., D) -> (quantized (..., D), codes (...) int64, aux_loss, stats)."""
        self.check_latent(z)
        with fp32_math(z):
            flat = z.detach().reshape(-1, self.dim).float()
            if self.training:
                if not bool(self.initialized):
                    self._init_from(flat)
                if self.dead_code_threshold > 0:
                    self._revive_dead_codes(flat)
            idx, _, sums, counts = nearest_code_with_sums(flat, self.codebook.detach())
            q = F.embedding(idx, self.codebook).view(z.shape).float()
            zf = z.float()
            aux = self.commitment * F.mse_loss(zf, q.detach())
            if not self.ema:
                aux = aux + F.mse_loss(q, zf.detach())
            if self.training:
                self._ema_update(sums, counts)
        # straight-through: the decoder's gradient reaches z; the codebook learns from aux
        quantized = z + (q.to(z.dtype) - z).detach()
        stats = {
            "usage": counts.detach(),
            "perplexity": perplexity_from_counts(counts),
            "n_used": (counts > 0).sum(),
        }
        return quantized, idx.view(z.shape[:-1]), aux, stats

    @torch.no_grad()
    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """z: (..., D) -> codes (...) int64, the nearest codebook rows."""
        self.check_latent(z)
        with fp32_math(z):
            return nearest_code(z.detach(), self.codebook.detach())[0]

    def codes_to_latent(self, codes: torch.Tensor) -> torch.Tensor:
        """codes: (...) int64 in [0, K) -> latents (..., D) float32."""
        return F.embedding(codes.long(), self.codebook)

    def code_keys(self, codes: torch.Tensor) -> torch.Tensor:
        return codes.reshape(-1).long()
