"""Quantizers: turn a continuous latent ``z`` (..., D), channels last, into discrete codes.

Every quantizer is an ``nn.Module`` with

- ``forward(z) -> (quantized, codes, aux_loss, stats)``: ``quantized`` has z's shape and
  dtype and passes gradients straight through to ``z``; ``aux_loss`` is a scalar;
  ``stats`` holds detached ``usage`` counts, the batch ``perplexity`` (exp of the
  entropy of the distribution of whole codes) and ``n_used`` (distinct codes);
- ``encode(z) -> codes``: the hard, noise-free codes, without losses;
- ``codes_to_latent(codes) -> latent`` (..., D), what the decoder reads;
- ``code_keys(codes) -> (T,) int64``: one integer per code position, equal for equal
  codes, for counting distinct codes.

Codebook arithmetic runs in float32 even under autocast, so bf16 training gives no NaNs.

Under DistributedDataParallel (a process group of more than one rank), training keeps
every rank's codebook identical and the regularisers global: VQ all-reduces the per-code
sums and counts before its EMA update, and k-means initialisation and dead-code revival
run on rank 0 over the all-gathered batch and are broadcast; the Gumbel KL and the binary
balance loss use the mean over the global batch, through a differentiable all-reduce.
With ranks holding consecutive slices of one batch, this is the single-process step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import distributed
from .kernels import nearest_code, nearest_code_with_sums
from .kmeans import KMeans

_HASH_PRIME = 2**31 - 1


def _fp32(z: torch.Tensor):
    """Context that turns autocast off, so codebook math stays float32."""
    return torch.autocast(device_type=z.device.type, enabled=False)


def _check_positive_int(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


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


def _batch_mean(x: torch.Tensor) -> torch.Tensor:
    """x: (T, ...) -> mean over the T rows of the global batch: this rank's alone, or all
    ranks' under DDP (one differentiable all-reduce of the sums and the row count)."""
    if not distributed.is_dist():
        return x.mean(0)
    sums = x.sum(0).reshape(-1)
    total = distributed.global_sum(torch.cat([sums, sums.new_tensor([x.shape[0]])]))
    return (total[:-1] / total[-1]).view(x.shape[1:])


def _code_stats(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """keys: (T,) int64 -> (distinct codes, perplexity) of this batch."""
    _, counts = torch.unique(keys, return_counts=True)
    return torch.tensor(counts.numel(), device=keys.device), perplexity_from_counts(counts)


class VectorQuantizer(nn.Module):
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

    code_tail: tuple[int, ...] = ()

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
        _check_positive_int("n_codes", n_codes)
        _check_positive_int("dim", dim)
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

    def _check(self, z: torch.Tensor) -> None:
        if z.ndim < 1 or z.shape[-1] != self.dim:
            raise ValueError(f"z must have shape (..., {self.dim}), got {tuple(z.shape)}")

    def forward(self, z: torch.Tensor):
        """z: (..., D) -> (quantized (..., D), codes (...) int64, aux_loss, stats)."""
        self._check(z)
        with _fp32(z):
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
        self._check(z)
        with _fp32(z):
            return nearest_code(z.detach(), self.codebook.detach())[0]

    def codes_to_latent(self, codes: torch.Tensor) -> torch.Tensor:
        """codes: (...) int64 in [0, K) -> latents (..., D) float32."""
        return F.embedding(codes.long(), self.codebook)

    def code_keys(self, codes: torch.Tensor) -> torch.Tensor:
        return codes.reshape(-1).long()


class GumbelQuantizer(nn.Module):
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
        _check_positive_int("n_codes", n_codes)
        _check_positive_int("dim", dim)
        _check_positive_int("groups", groups)
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

    def _check(self, z: torch.Tensor) -> None:
        if z.ndim < 1 or z.shape[-1] != self.dim:
            raise ValueError(f"z must have shape (..., {self.dim}), got {tuple(z.shape)}")

    def _shape_codes(self, idx: torch.Tensor, lead: torch.Size) -> torch.Tensor:
        """idx: (T, G) -> (*lead) or (*lead, G)."""
        return idx.view(*lead, *self.code_tail)

    def forward(self, z: torch.Tensor):
        """z: (..., D) -> (quantized (..., D), codes (...) or (..., G) int64, aux_loss, stats)."""
        self._check(z)
        lead = z.shape[:-1]
        with _fp32(z):
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
            mean_p = _batch_mean(p) if self.training else p.mean(0)  # (G, K)
            kl = (mean_p * (mean_p * self.n_codes).clamp(min=1e-12).log()).sum(-1).mean()
            aux = self.kl_weight * kl
        codes = self._shape_codes(idx, lead)
        n_used, perplexity = _code_stats(self.code_keys(codes))
        stats = {
            "usage": torch.bincount(idx.reshape(-1), minlength=self.n_codes).float(),
            "perplexity": perplexity,
            "n_used": n_used,
        }
        return q.reshape(z.shape).to(z.dtype), codes, aux, stats

    def _logits(self, zg: torch.Tensor) -> torch.Tensor:
        """zg: (T, G, Dg) float32 -> (T, G, K) minus squared distances to each group's codes."""
        cb = self.codebook
        return (
            2.0 * torch.einsum("tgd,gkd->tgk", zg, cb)
            - (cb * cb).sum(-1).unsqueeze(0)
            - (zg * zg).sum(-1, keepdim=True)
        )

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        """z: (..., D) -> (..., G, K) float32 logits of the code choice (differentiable);
        their softmax is the code distribution without Gumbel noise."""
        self._check(z)
        with _fp32(z):
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
        self._check(z)
        with _fp32(z):
            zg = z.detach().float().reshape(-1, self.groups, self.dim // self.groups)
            return self._shape_codes(self._nearest(zg), z.shape[:-1])

    def codes_to_latent(self, codes: torch.Tensor) -> torch.Tensor:
        """codes: (...) or (..., G) int64 in [0, K) -> latents (..., D) float32."""
        lead = codes.shape[: codes.ndim - len(self.code_tail)]
        idx = codes.long().reshape(-1, self.groups)
        return self._gather(idx).reshape(*lead, self.dim)

    def code_keys(self, codes: torch.Tensor) -> torch.Tensor:
        return code_keys(codes.reshape(-1, self.groups), self.n_codes)


class BinaryQuantizer(nn.Module):
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

    def __init__(self, n_bits: int, *, stochastic: bool = False, balance_weight: float = 0.1):
        super().__init__()
        _check_positive_int("n_bits", n_bits)
        self.n_bits = self.dim = n_bits
        self.stochastic, self.balance_weight = stochastic, balance_weight
        self.code_tail = (n_bits,)

    def _check(self, z: torch.Tensor) -> None:
        if z.ndim < 1 or z.shape[-1] != self.n_bits:
            raise ValueError(f"z must have shape (..., {self.n_bits}), got {tuple(z.shape)}")

    def forward(self, z: torch.Tensor):
        """z: (..., B) -> (quantized (..., B) in {0, 1}, codes (..., B) uint8, aux_loss, stats)."""
        self._check(z)
        with _fp32(z):
            p = torch.sigmoid(z.float())
            if self.training and self.stochastic:
                bits = (torch.rand_like(p) < p).float()
            else:
                bits = (p > 0.5).float()
            q = bits + (p - p.detach())  # exactly the bits forward, sigmoid gradient back
            flat_p = p.reshape(-1, self.n_bits)
            mean_p = _batch_mean(flat_p) if self.training else flat_p.mean(0)
            aux = self.balance_weight * (mean_p - 0.5).pow(2).mean()
        codes = bits.to(torch.uint8)
        n_used, perplexity = _code_stats(self.code_keys(codes))
        stats = {
            "usage": bits.detach().reshape(-1, self.n_bits).sum(0),
            "perplexity": perplexity,
            "n_used": n_used,
        }
        return q.to(z.dtype), codes, aux, stats

    @torch.no_grad()
    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """z: (..., B) -> codes (..., B) uint8, ``sigmoid(z) > 0.5``."""
        self._check(z)
        with _fp32(z):
            return (torch.sigmoid(z.float()) > 0.5).to(torch.uint8)

    def codes_to_latent(self, codes: torch.Tensor) -> torch.Tensor:
        """codes: (..., B) in {0, 1} -> latents (..., B) float32."""
        return codes.to(torch.float32)

    def code_keys(self, codes: torch.Tensor) -> torch.Tensor:
        return code_keys(codes.reshape(-1, self.n_bits), 2)
