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


def save_small(x, path, model: str = "rvq", **kw):
    """:func:`fit_small` on ``x``, saved to ``path`` with its code prior and refinement
    table fitted on ``x``, as ``discretae fit`` saves a compression model. -> path."""
    from discretae.compression.codec import save_prior
    from discretae.compression.fitting import fit_prior, fit_refinement

    est = fit_small(x, model, **kw)
    est.save(path)
    save_prior(path, fit_prior(est, x), refinement=fit_refinement(est, x))
    return path
