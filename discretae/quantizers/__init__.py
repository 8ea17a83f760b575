"""Quantizers: turn a continuous latent ``z`` (..., D), channels last, into discrete codes.

Every quantizer is a :class:`~discretae.quantizers.base.Quantizer` (an ``nn.Module``) with

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

from discretae.quantizers.base import Quantizer, code_keys, perplexity_from_counts
from discretae.quantizers.binary import BinaryQuantizer
from discretae.quantizers.gumbel import GumbelQuantizer
from discretae.quantizers.residual import ResidualVectorQuantizer
from discretae.quantizers.vq import VectorQuantizer

__all__ = [
    "BinaryQuantizer",
    "GumbelQuantizer",
    "Quantizer",
    "ResidualVectorQuantizer",
    "VectorQuantizer",
    "code_keys",
    "perplexity_from_counts",
]
