"""Tiny grid-latent models for the compression tests (one thread, CPU, seed 0)."""

from __future__ import annotations

import torch

from discretae.estimator.discrete_autoencoder import DiscreteAutoencoder


def fit_small(x, model: str = "rvq", **kw) -> DiscreteAutoencoder:
    """A 2x2-grid model of ``model`` kind fitted on ``x``: 16 codes, one epoch, batches
    of 32 (``kw`` overrides any of them); rvq gets 3 levels."""
    params = dict(n_codes=16, latent="grid", grid=(2, 2), epochs=1, batch_size=32)
    params.update(kw)
    if model == "rvq":
        params.setdefault("quantizer_options", {"levels": 3})
    torch.set_num_threads(1)
    return DiscreteAutoencoder(model=model, device="cpu", random_state=0, **params).fit(x)
