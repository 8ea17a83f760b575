"""The clustering recipe: what a global gumbel code on images trains with by default.

The recipe is the view objectives (``RECIPE_OBJECTIVES``) with their schedule: a
learning rate of 2e-3 along a cosine, for ``RECIPE_STEPS`` steps on small data (fewer
on larger images: ``RECIPE_MAX_PIXELS``) and at least ``RECIPE_MIN_EPOCHS`` epochs on
large data. Every choice here was made without
labels, by seed agreement on digits (the NMI between the cluster ids of seeds 0, 1
and 2; ``benchmarks/clustering.py``), and the comment on each says what was measured.
"""

from __future__ import annotations

import math

from discretae.core.errors import DiscretaeError
from discretae.models.objectives import OBJECTIVES, VIEW_TERMS

# Steps when epochs are not given. Seed agreement on digits (3 seeds, batch 256):
# 400 steps 0.856, 600 0.899, 800 0.886, 2000 0.938; the labels agree (mean NMI 0.845,
# 0.869, 0.861, 0.907), so the recipe keeps 2000 steps however small the data. Large
# data takes RECIPE_MIN_EPOCHS epochs instead (Fashion-MNIST: 12 epochs of 274 steps),
# and tiny data at most RECIPE_MAX_EPOCHS.
RECIPE_STEPS = 2000
RECIPE_MIN_EPOCHS, RECIPE_MAX_EPOCHS = 12, 300
# The cost cap: a step costs about batch x H x W pixels of convolution, so the steps are
# also capped at RECIPE_MAX_PIXELS / (batch x H x W) before the epoch bounds: 2000
# steps on 8x8 digits, 458 on 32x32 images, 598 on 28x28; large data still gets its
# RECIPE_MIN_EPOCHS. It is a time budget, not a quality choice: a default fit on 2,000
# 32x32 colour images takes about two minutes on a 2-core CPU, startup included
# (benchmarks/real_folders.py, seeds 0-2: 124 s, NMI 0.617). A cap of 100M (381 steps)
# was tried: 105 s, but NMI 0.577 (real_folders-fashion-jpeg-cpu-cap100M.json), so the
# cap stays at 120M; --epochs gives more.
RECIPE_MAX_PIXELS = 120_000_000
RECIPE_LR = 2e-3
# The learning-rate curve, by seed agreement: cosine 0.937, constant 0.896,
# hold-cosine 0.898, so cosine stays, although the labels prefer constant there (NMI
# 0.909 / ACC 0.914 against 0.873 / 0.873).
RECIPE_LR_SCHEDULE = "cosine"
# The objectives. Self-labelling joined by the same rule (seed agreement must not
# fall): 0.938 with it, 0.937 without.
RECIPE_OBJECTIVES = ("mi", "contrastive", "selflabel", "style")
# The decoder. Light (no full-resolution stage; half the step time on 32x32 colour) by
# the same rule, 2000 steps, seeds 0-2: agreement 0.940 light, 0.940 full (labels: mean
# NMI 0.907 both). On 600 steps light agreed less (0.837 against 0.899). Fashion-MNIST,
# seeds 0-2: agreement 0.795 light, 0.786 full; the labels: NMI 0.654 / ACC 0.674 light
# against 0.656 / 0.679 full, worst seed 0.643 / 0.616 against 0.629 / 0.599.
RECIPE_DECODER = "light"


def recipe_applies(model: str, latent: str, quantizer_options: dict | None, input_shape) -> bool:
    """Whether ``objectives="auto"`` means the recipe: a gumbel model with one group and
    a global latent, on images (C, H, W)."""
    groups = (quantizer_options or {}).get("groups", 1)
    return model == "gumbel" and latent == "global" and groups == 1 and len(input_shape) == 3


def objective_names(text, recipe: bool) -> list[str]:
    """The objectives named by ``text`` ("auto", "none" or a comma list); "auto" is
    ``RECIPE_OBJECTIVES`` where ``recipe`` holds, else none."""
    if not isinstance(text, str):
        raise DiscretaeError(f"objectives must be a string, got {text!r}")
    if text == "auto":
        return list(RECIPE_OBJECTIVES) if recipe else []
    names = [] if text.strip() == "none" else [t.strip() for t in text.split(",")]
    bad = [n for n in names if n not in OBJECTIVES]
    if bad or len(set(names)) != len(names):
        raise DiscretaeError(
            f"objectives={text!r}: give 'auto', 'none' or a comma list of distinct "
            f"names from {', '.join(OBJECTIVES)}"
        )
    return names


def objective_config(names: list[str], options: dict | None) -> tuple[int, dict]:
    """-> (style_dim, the objectives dict of ``build_autoencoder``) for the objectives
    ``names`` and the user's ``objective_options``."""
    options = dict(options or {})
    style_dim = options.pop("style_dim", 8)
    if "style" not in names:
        style_dim = 0
    views = [n for n in names if n != "style"]
    if not views:
        if options:
            raise DiscretaeError(
                f"objective_options {sorted(options)} given, but no view objective is on"
            )
        return style_dim, {}
    # a named objective weighs 1 unless told; the others are off
    weights = {k: options.pop(k, 1.0) if k in views else 0.0 for k in VIEW_TERMS}
    return style_dim, {**options, **weights}


def recipe_decoder(decoder: str, objectives: dict) -> str:
    """The decoder a model is built with: ``decoder``, or for "auto" ``RECIPE_DECODER``
    when view objectives are on (the recipe) and "full" otherwise."""
    if decoder != "auto":
        return decoder
    return RECIPE_DECODER if objectives else "full"


# Epochs when not given, outside the recipe: 30; a grid (compression) model takes more
# on small data, up to the recipe's steps and cost cap. A folder of 244 clip-art images
# at 64x45 (one step per epoch at batch 256) coded its images at 19.5 dB with 1 level
# after 30 epochs (50 s on 2 cores) and at 23.5 dB after 162 (209 s), where `compress
# --psnr 30` then took 385 B an image instead of 517 (WebP on the same images: 235).
DEFAULT_EPOCHS = 30


def grid_epochs(steps_per_epoch: int, batch_size: int = 1, pixels: int = 1) -> int:
    """Epochs of a grid model: the recipe's (``recipe_epochs``), but at least
    ``DEFAULT_EPOCHS``."""
    return recipe_epochs(steps_per_epoch, batch_size, pixels, least=DEFAULT_EPOCHS)


def recipe_epochs(
    steps_per_epoch: int, batch_size: int = 1, pixels: int = 1, least: int = RECIPE_MIN_EPOCHS
) -> int:
    """Epochs of the recipe: about ``RECIPE_STEPS`` steps, at most
    ``RECIPE_MAX_PIXELS / (batch_size * pixels)`` (``pixels``: H x W of an image), at
    least ``least`` and at most ``RECIPE_MAX_EPOCHS`` epochs."""
    steps = min(RECIPE_STEPS, RECIPE_MAX_PIXELS // max(batch_size * pixels, 1))
    wanted = math.ceil(max(steps, 1) / max(steps_per_epoch, 1))
    return min(RECIPE_MAX_EPOCHS, max(least, wanted))
