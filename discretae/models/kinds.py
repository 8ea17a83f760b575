"""The registry of model kinds: what ``build_autoencoder`` needs to know about each one.

A kind is a small class registered under its name with ``@register_kind(name)``: it
names its quantizer class, says which extras it allows, and turns the builder's
settings into the quantizer's arguments. ``build_autoencoder`` looks the kind up with
:func:`model_kind` and has no branch per kind; a new kind is one class here.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from discretae.core.errors import DiscretaeError
from discretae.quantizers import (
    BinaryQuantizer,
    GumbelQuantizer,
    Quantizer,
    ResidualVectorQuantizer,
    VectorQuantizer,
)

# name -> quantizer class, in registration order (public: ``discretae.MODEL_KINDS``)
MODEL_KINDS: dict[str, type[Quantizer]] = {}
# name -> its ModelKind, what build_autoencoder looks up
KINDS: dict[str, ModelKind] = {}


class ModelKind:
    """The defaults every kind starts from: a codebook of ``n_codes`` rows of
    ``latent_dim`` (32 unless given), no style latent, no view objectives."""

    quantizer: type[Quantizer]
    style = False  # may carry a continuous style latent beside a global code
    view_objectives = False  # may train with the two-view objectives
    # at most this many stride-2 stages to the default code grid (None: as many as the
    # image size takes, ``default_downsampling``)
    grid_stages: int | None = None

    def groups(self, options: dict) -> int:
        """Independent code choices per latent position, from the quantizer options."""
        return 1

    def latent_dim(self, given: int | None, n_bits: int, groups: int) -> int:
        """The latent dimension D: ``given``, or 32 rounded up to a multiple of groups."""
        return groups * math.ceil(32 / groups) if given is None else given

    def make_quantizer(
        self, n_codes: int, n_bits: int, latent_dim: int, options: dict
    ) -> Quantizer:
        """The quantizer; ``options`` are its extra keyword arguments."""
        return self.quantizer(n_codes, latent_dim, **options)


def register_kind(name: str) -> Callable[[type[ModelKind]], type[ModelKind]]:
    """Class decorator: register a ``ModelKind`` subclass under ``name``."""

    def add(cls: type[ModelKind]) -> type[ModelKind]:
        KINDS[name] = cls()
        MODEL_KINDS[name] = cls.quantizer
        return cls

    return add


def model_kind(name: str) -> ModelKind:
    """The registered kind ``name``; DiscretaeError listing the valid ones otherwise."""
    if name not in KINDS:
        raise DiscretaeError(f"unknown model kind {name!r}; valid kinds: {', '.join(KINDS)}")
    return KINDS[name]


@register_kind("vq")
class VQKind(ModelKind):
    """VQ-VAE: the nearest of ``n_codes`` codebook rows."""

    quantizer = VectorQuantizer
    style = True


@register_kind("gumbel")
class GumbelKind(ModelKind):
    """Gumbel-softmax: a one-hot choice per group; the one kind with view objectives."""

    quantizer = GumbelQuantizer
    style = True
    view_objectives = True

    def groups(self, options: dict) -> int:
        return options.get("groups", 1)


@register_kind("binary")
class BinaryKind(ModelKind):
    """``n_bits`` thresholded units: the latent has exactly ``n_bits`` dimensions."""

    quantizer = BinaryQuantizer

    def latent_dim(self, given: int | None, n_bits: int, groups: int) -> int:
        if given not in (None, n_bits):
            raise DiscretaeError(
                f"binary latents have n_bits={n_bits} dims; got latent_dim={given!r}"
            )
        return n_bits

    def make_quantizer(
        self, n_codes: int, n_bits: int, latent_dim: int, options: dict
    ) -> Quantizer:
        return self.quantizer(n_bits, **options)


@register_kind("rvq")
class ResidualKind(ModelKind):
    """Residual VQ levels: a rate knob for the code archive."""

    quantizer = ResidualVectorQuantizer
    # a compressor: the default grid is the image over 4 at most (7x7 for 28x28, 8x8
    # for 32x32, 16x16 for 64x64; the image size's own stages where they are fewer:
    # 16x12 for a folder's 32x23). On 64x64 clip art (benchmarks/rate_distortion.py,
    # openclipart, 2026-12-06) one 16x16 level coded 998 test images at 151 B and
    # 26.6 dB, where the 8x8 grid took 6 levels and 284 B for 26.0 dB; it also trains
    # 2.6x faster. At 32x23 (244 clip-art files, fitted and coded through the CLI)
    # 16x12 stayed: 1 level 58.7 B at 27.1 dB, where 8x6 took 2 levels and 65.1 B for
    # 26.1 dB; both wrote 160 B for 32 dB
    grid_stages = 2
