"""Fitting what a :class:`~discretae.compression.codec.Codec` codes with, on a fitted
estimator's training images: its code prior (:func:`fit_prior`: context tables, a learned
network, or whichever codes held-out images in fewer bits) and its refinement table
(:func:`fit_refinement`). ``codec.save_prior`` stores both in the model file."""

from __future__ import annotations

import numpy as np
import torch

from discretae.compression.codec import BASE_CHUNK, Codec, code_layout, code_vectors
from discretae.compression.learned_prior import LearnedPrior
from discretae.compression.prior import CodePrior
from discretae.compression.refine import Refinement
from discretae.core.errors import DiscretaeError

REFINE_FIT_IMAGES = 8192  # training images the refinement table is fitted on, at most
PRIOR_KINDS = ("auto", "context", "learned")
HELD_OUT = 0.1  # share of the training images "auto" scores the two priors on
MIN_LEARNED_IMAGES = 200  # "auto" keeps the context tables for fewer training images


def check_prior_kind(kind: str) -> str:
    if kind not in PRIOR_KINDS:
        raise DiscretaeError(f"prior must be one of {', '.join(PRIOR_KINDS)}, got {kind!r}")
    return kind


def fit_prior(
    est, X, *, batch_size: int = 1024, seed: int = 0, kind: str = "context", callback=None
):
    """Fit the code prior of a fitted estimator on training images X (as ``fit`` takes
    them): encodes X batch by batch, then fits the ``kind`` of prior on its codes.

    ``kind``: "context" (tables of context counts; the default here), "learned" (a
    causal network; it takes minutes on 60k images on a CPU), or "auto" (the ``fit``
    command's default): for a grid code of at least ``MIN_LEARNED_IMAGES`` images and
    2 codes, both are fitted on 90% of the images (a seeded draw)
    and the one that codes the other 10% in fewer bits is kept (the context tables are
    then refitted on every image); otherwise the context tables. The prior's ``choice``
    says what was compared. ``callback`` gets ``{"stage", "done", "total"}`` while the
    network trains.
    """
    check_prior_kind(kind)
    codes = np.concatenate(
        [est.transform(X[i : i + batch_size]) for i in range(0, len(X), batch_size)]
    )
    grid, n_levels, n_codes = code_layout(est)
    sym = codes.reshape(len(codes), *grid, n_levels)
    vectors = code_vectors(est)

    def learned(part):
        def progress(t, step, total, loss):
            if callback is not None:
                done = t * total + step + 1
                callback({"stage": "learned prior", "done": done, "total": n_levels * total})

        return LearnedPrior.fit(part, n_codes, seed=seed, progress=progress)

    small = grid == (1, 1) or len(sym) < MIN_LEARNED_IMAGES or n_codes < 2
    if kind == "context" or (kind == "auto" and small):
        prior = CodePrior.fit(sym, n_codes, vectors, seed=seed)
        prior.choice = {"kind": "context", "rule": kind}
        return prior
    if kind == "learned":
        prior = learned(sym)
        prior.choice = {"kind": "learned", "rule": kind}
        return prior
    order = np.random.default_rng(seed).permutation(len(sym))
    n_out = max(1, int(round(HELD_OUT * len(sym))))
    train, held = sym[np.sort(order[n_out:])], sym[np.sort(order[:n_out])]
    tables, network = CodePrior.fit(train, n_codes, vectors, seed=seed), learned(train)
    per_image = {
        "context": tables.cost_bits(held) / len(held),
        "learned": network.cost_bits(held) / len(held),
    }
    winner = min(per_image, key=per_image.get)
    prior = network if winner == "learned" else CodePrior.fit(sym, n_codes, vectors, seed=seed)
    prior.choice = {
        "kind": winner,
        "rule": "auto: fewer bits on held-out training images",
        "held_out_images": len(held),
        "held_out_bits_per_image": {k: round(v, 2) for k, v in per_image.items()},
    }
    return prior


def fit_refinement(est, X, *, batch_size: int = BASE_CHUNK, seed: int = 0) -> Refinement:
    """Fit the refinement table of a fitted image model on training images X (as ``fit``
    takes them; at most ``REFINE_FIT_IMAGES`` of them, drawn with ``seed``): the mean
    residual per level count, level-0 code and pixel offset (one-hot and binary models
    decode all their levels only, so only the full count is measured for them)."""
    n = len(X)
    keep = np.arange(n)
    if n > REFINE_FIT_IMAGES:
        keep = np.sort(np.random.default_rng(seed).choice(n, REFINE_FIT_IMAGES, replace=False))
    codec = Codec(est)
    x = torch.as_tensor(np.asarray(X)[keep]).float()
    sym = np.concatenate(
        [codec.encode_images(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    )
    x8 = torch.round(x.clamp(0, 1) * 255).to(torch.uint8).numpy()
    if codec.residual:
        bases = [codec.base_images(sym[..., :lv]) for lv in range(1, codec.n_levels + 1)]
    else:  # only rvq decodes a prefix of its levels: the other rows are never read
        bases = [codec.base_images(sym)] * codec.n_levels
    return Refinement.fit(x8, sym, bases, codec.n_codes)
