"""Discrete autoencoders: encoder + quantizer + decoder, and their builder.

``build_autoencoder("vq" | "gumbel" | "binary" | "rvq", input_shape, ...)`` returns an
``Autoencoder`` whose ``config`` rebuilds it: ``build_autoencoder(**model.config)``. The
kinds are registered in :mod:`discretae.models.kinds`.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from discretae.core.checks import check_int
from discretae.core.errors import DiscretaeError
from discretae.models.augment import AugmentConfig, augment
from discretae.models.kinds import MODEL_KINDS, ModelKind, model_kind
from discretae.models.networks import (
    ConvDecoder,
    ConvEncoder,
    MLPDecoder,
    MLPEncoder,
    default_downsampling,
)
from discretae.models.objectives import ViewObjectives, objective_settings

__all__ = ["LATENTS", "LOSSES", "MODEL_KINDS", "Autoencoder", "build_autoencoder"]

LATENTS = ("global", "grid")
LOSSES = ("bce", "mse")
DECODERS = ("full", "light")


# weight of the cross-entropy against ``targets`` (an ensemble's consensus) in training
CONSENSUS_WEIGHT = 5.0


class Autoencoder(nn.Module):
    """encoder -> quantizer -> decoder on inputs in [0, 1].

    Input x is (B, C, H, W) for images or (B, F) for flat vectors (``input_shape``
    without the batch axis). Codes are (B, *code_shape): ``code_shape`` is the latent
    grid (h, w) or () for a global latent, followed by the quantizer's code tail
    (groups for grouped Gumbel, B for binary).

    With a content/style split (``style_dim`` > 0) the encoder also gives a small
    continuous style latent (a Gaussian posterior, KL to N(0, 1)) that the decoder takes
    beside the code, so the code need not carry the style; decoding codes alone uses the
    mean style, 0. With view objectives (``objectives``) every training batch is
    augmented twice and the terms of :class:`~discretae.models.objectives.ViewObjectives` are
    added to the auxiliary loss; the reconstruction is then of the first view.
    """

    def __init__(
        self,
        encoder: nn.Module,
        quantizer: nn.Module,
        decoder: nn.Module,
        config: dict,
        objectives: ViewObjectives | None = None,
    ) -> None:
        super().__init__()
        self.encoder, self.quantizer, self.decoder = encoder, quantizer, decoder
        self.objectives = objectives
        self.config = config
        self.input_shape = tuple(config["input_shape"])
        grid = config["grid"]
        self.latent_shape = tuple(grid) if config["latent"] == "grid" else ()
        self.code_shape = self.latent_shape + tuple(quantizer.code_tail)
        self.code_dtype = quantizer.code_dtype
        self.style_dim = int(config.get("style_dim", 0))
        opts = config.get("objectives") or {}
        self.augment = AugmentConfig(**opts.get("augment", {})) if objectives is not None else None
        # the dtype the encoder and decoder networks train in under autocast (None: their
        # own, float32); the quantizer, the objectives and the losses stay float32
        self.low_precision: torch.dtype | None = None

    def _networks_cast(self, x: torch.Tensor):
        """Autocast to ``low_precision`` around a network in training; outside training
        the caller's autocast, if any, holds (the codec decodes under bfloat16 where a
        CPU computes it natively)."""
        if not self.training:
            return contextlib.nullcontext()
        dtype = self.low_precision
        return torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None)

    def set_progress(self, frac: float) -> None:
        """Training progress in [0, 1], for schedules such as the Gumbel temperature."""
        self.quantizer.set_progress(frac)

    def _split(self, out: torch.Tensor):
        """Encoder output -> (content latent, style mean, style log-variance, embedding)."""
        d, s = self.quantizer.dim, self.style_dim
        return out[..., :d], out[..., d : d + s], out[..., d + s : d + 2 * s], out[..., d + 2 * s :]

    def _decode_logits(self, quantized: torch.Tensor, style: torch.Tensor | None) -> torch.Tensor:
        if self.style_dim:
            if style is None:
                style = quantized.new_zeros(*quantized.shape[:-1], self.style_dim)
            quantized = torch.cat([quantized, style.to(quantized.dtype)], -1)
        with self._networks_cast(quantized):
            return self.decoder(quantized).float()

    @property
    def mining(self):
        """The neighbour mining the training loop does for this model (a
        :class:`~discretae.models.neighbours.NeighbourMining`), or None."""
        return self.objectives.mining if self.objectives is not None else None

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, *input_shape) in [0, 1] -> (B, E) the contrastive embeddings, L2-normalised
        (what neighbour mining searches; the caller sets eval mode)."""
        return F.normalize(self._split(self.encoder(x))[3].float(), dim=-1)

    def forward(
        self,
        x: torch.Tensor,
        neighbours: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
    ) -> dict:
        """x: (B, *input_shape) in [0, 1] -> dict(x_hat, codes, aux_loss, stats, recon_loss).

        ``neighbours`` (B, *input_shape): a mined neighbour of each image, for the
        neighbours objective (training with view objectives only); it is augmented and
        encoded with the two views, and only that term uses it. ``targets`` (B,) int64: a
        code each image should get (an ensemble's consensus, in training): the
        cross-entropy of the code logits (of both views, with view objectives) against
        it joins the auxiliary loss as "consensus".
        """
        two_views = self.training and self.objectives is not None
        target, b = x, x.shape[0]
        if two_views:
            views = [augment(x, self.augment), augment(x, self.augment)]
            if neighbours is not None:
                views.append(augment(neighbours, self.augment))
            x = torch.cat(views)
            target = x[:b]
        with self._networks_cast(x):
            encoded = self.encoder(x).float()
        z, mu, logvar, h = self._split(encoded)
        quantized, codes, aux_loss, stats = self.quantizer(z[:b])
        style = None
        if self.style_dim:
            mu, logvar = mu[:b].float(), logvar[:b].float().clamp(-10, 10)
            style = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.training else mu
            kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(-1).mean()
            # per image, over the pixels the reconstruction loss averages
            kl = kl / math.prod(self.input_shape)
            aux_loss = aux_loss + kl
            stats = {**stats, "style_kl": kl.detach()}
        if two_views:
            view_logits = self.quantizer.logits(z)[..., 0, :]
            nb = nb_z = None
            if neighbours is not None:
                nb, nb_z = view_logits[2 * b :], z[2 * b :]
            extra, parts = self.objectives(view_logits[: 2 * b], z[: 2 * b], h[: 2 * b], nb, nb_z)
            aux_loss = aux_loss + extra
            stats = {**stats, **parts}
        if targets is not None:
            lg = view_logits[: 2 * b] if two_views else self.quantizer.logits(z[:b])[..., 0, :]
            ce = F.cross_entropy(lg.float(), targets.repeat(lg.shape[0] // b))
            aux_loss = aux_loss + CONSENSUS_WEIGHT * ce
            stats = {**stats, "consensus": ce.detach()}
        logits = self._decode_logits(quantized, style)
        if self.config["loss"] == "bce":
            recon = F.binary_cross_entropy_with_logits(logits.float(), target.float())
        else:
            recon = F.mse_loss(torch.sigmoid(logits.float()), target.float())
        return {
            "x_hat": torch.sigmoid(logits),
            "codes": codes,
            "aux_loss": aux_loss,
            "stats": stats,
            "recon_loss": recon,
        }

    @torch.no_grad()
    def latent(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, *input_shape) in [0, 1] -> what the quantizer codes: (B, D) or (B, h, w, D)."""
        return self._split(self.encoder(x))[0]

    @torch.no_grad()
    def head_codes(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, *input_shape) -> (B, H) int64: the code of every code head, the
        quantizer's first (a global one-group model with ``heads`` > 1; the caller sets
        eval mode)."""
        z = self.latent(x).float()
        codes = self.quantizer.encode(z).reshape(-1, 1)
        return torch.cat([codes, self.objectives.head_codes(z)], 1)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, *input_shape) in [0, 1] -> codes (B, *code_shape)."""
        return self.quantizer.encode(self.latent(x))

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes: (B, *code_shape) -> x_hat (B, *input_shape) float in [0, 1]; with a
        style latent, the mean style."""
        latent = self.quantizer.codes_to_latent(codes)
        return torch.sigmoid(self._decode_logits(latent, None).float())


def build_autoencoder(
    kind: str,
    input_shape,
    *,
    latent: str = "global",
    n_codes: int = 10,
    n_bits: int = 16,
    latent_dim: int | None = None,
    grid=None,
    width: int = 32,
    hidden: int = 256,
    loss: str = "bce",
    quantizer_options: dict | None = None,
    style_dim: int = 0,
    objectives: dict | None = None,
    decoder: str = "full",
    stages: int | None = None,
) -> Autoencoder:
    """Build a discrete autoencoder.

    Args:
        kind: a name of ``MODEL_KINDS``: "vq", "gumbel", "binary" or "rvq".
        input_shape: (C, H, W) for images (a conv pair) or (F,) for flat vectors (an MLP
            pair, global latent only).
        latent: "global" (one code per input) or "grid" (h x w codes per image).
        n_codes: codebook size K for vq, gumbel and rvq.
        n_bits: bits B for binary.
        latent_dim: latent dimension D for vq, gumbel and rvq (default 32); binary uses B.
        grid: (h, w) of a grid latent; None: (H, W) / 2**stages (rvq: at most 2).
        width: channels of the first conv stage (doubling per stage, at most 256).
        hidden: width of the dense layer of a global conv latent.
        loss: reconstruction loss, "bce" or "mse", on [0, 1] inputs.
        quantizer_options: extra keyword arguments of the quantizer class.
        style_dim: size of a continuous style latent beside the code (0: none); Gumbel
            or VQ with a global latent on images only.
        objectives: two-view objectives (Gumbel, global latent, images only), a dict
            of ``OBJECTIVE_DEFAULTS`` keys (:mod:`discretae.models.objectives`); None
            or {} for reconstruction alone.
        decoder: "full", or "light" (a conv decoder without its full-resolution stage,
            twice as fast to train on 32x32 colour images; see ``ConvDecoder``). Model
            files from before this setting read as "full".
        stages: the conv networks' stride-2 stages; None: ``default_stages``. Model
            files from before this setting read as ``earlier_model_config`` says.

    Raises:
        DiscretaeError (a ValueError): an unknown kind, latent or loss, or bad sizes.
    """
    spec = model_kind(kind)
    input_shape = _checked_input(input_shape, latent, loss, decoder)
    sizes = {"n_codes": n_codes, "n_bits": n_bits, "width": width, "hidden": hidden}
    options = dict(quantizer_options or {})
    groups, latent_dim = _checked_sizes(spec, sizes, options, latent_dim, style_dim)
    objectives = objective_settings(objectives)
    _check_extras(spec, kind, latent, groups, input_shape, objectives, style_dim)
    grid = _latent_grid(input_shape, latent, grid, spec.grid_stages)
    stages = _checked_stages(input_shape, grid, stages)
    enc_dim = latent_dim + 2 * style_dim + objectives.get("embed_dim", 0)
    nets = dict(latent=latent, grid=grid, width=width, hidden=hidden, n_down=stages)
    encoder, dec = _networks(input_shape, enc_dim, latent_dim + style_dim, nets, decoder)
    quantizer = _quantizer(spec, kind, n_codes, n_bits, latent_dim, options)
    config = {
        "kind": kind,
        "input_shape": list(input_shape),
        "latent": latent,
        "n_codes": n_codes,
        "n_bits": n_bits,
        "latent_dim": latent_dim,
        "grid": list(grid) if grid is not None else None,
        "width": width,
        "hidden": hidden,
        "loss": loss,
        "quantizer_options": options,
        "style_dim": style_dim,
        "objectives": objectives,
        "decoder": decoder,
        "stages": stages,
    }
    views = ViewObjectives.from_settings(objectives, n_codes, latent_dim) if objectives else None
    return Autoencoder(encoder, quantizer, dec, config, views)


def _checked_sizes(
    spec: ModelKind, sizes: dict, options: dict, latent_dim: int | None, style_dim: int
) -> tuple[int, int]:
    """The sizes checked; -> (groups, the latent dimension)."""
    for name, value in sizes.items():
        check_int(name, value)
    groups = spec.groups(options)
    check_int("groups", groups)
    latent_dim = spec.latent_dim(latent_dim, sizes["n_bits"], groups)
    check_int("latent_dim", latent_dim)
    check_int("style_dim", style_dim, low=0)
    return groups, latent_dim


def _checked_input(input_shape, latent: str, loss: str, decoder: str) -> tuple[int, ...]:
    """The latent, loss and decoder names, and the input shape as a tuple of ints."""
    if decoder not in DECODERS:
        raise DiscretaeError(f"decoder={decoder!r} is not one of {DECODERS}")
    if latent not in LATENTS:
        raise DiscretaeError(f"latent={latent!r} is not one of {LATENTS}")
    if loss not in LOSSES:
        raise DiscretaeError(f"loss={loss!r} is not one of {LOSSES}")
    input_shape = tuple(int(s) for s in input_shape)
    if len(input_shape) not in (1, 3) or min(input_shape) < 1:
        raise DiscretaeError(f"input_shape must be (C, H, W) or (F,), got {input_shape}")
    return input_shape


def _check_extras(
    spec: ModelKind, kind: str, latent: str, groups: int, input_shape, objectives, style_dim
) -> None:
    """View objectives and a style latent only where the kind and the latent allow them."""
    if objectives and (
        not spec.view_objectives or latent != "global" or groups != 1 or len(input_shape) != 3
    ):
        raise DiscretaeError(
            "view objectives need image input and a global gumbel code with one group; got "
            f"kind={kind!r}, latent={latent!r}, groups={groups}, input_shape={input_shape}"
        )
    if style_dim and (not spec.style or latent != "global"):
        raise DiscretaeError(
            f"a style latent needs a global gumbel or vq code; got kind={kind!r}, latent={latent!r}"
        )


def _latent_grid(
    input_shape: tuple[int, ...], latent: str, grid, max_stages: int | None = None
) -> tuple[int, int] | None:
    """The (h, w) of a grid latent (given, or the image over 2**stages, at most
    ``max_stages`` of them); None if global."""
    if latent != "grid":
        return None
    if len(input_shape) == 1:
        raise DiscretaeError("latent='grid' needs image input (N, H, W[, C]); got flat vectors")
    _, h, w = input_shape
    if grid is None:
        n = default_downsampling(h, w)
        f = 2 ** (n if max_stages is None else min(n, max_stages))
        grid = (math.ceil(h / f), math.ceil(w / f))
    grid = tuple(grid)
    if len(grid) != 2 or not all(isinstance(g, int) and g >= 1 for g in grid):
        raise DiscretaeError(f"grid must be two integers >= 1, got {grid!r}")
    if grid[0] > h or grid[1] > w:
        raise DiscretaeError(f"grid {grid} is larger than the image ({h}, {w})")
    return grid


def default_stages(image_hw: tuple[int, int], grid: tuple[int, int] | None) -> int:
    """Stride-2 stages for an image and its code grid: ``default_downsampling`` of the
    image, fewer while the feature map would be coarser than the grid (at least one), so
    that a fine grid (16x16 on 64x64 images) gets its own features instead of a coarse
    map's repeated."""
    h, w = image_hw
    n = default_downsampling(h, w)
    while (
        grid is not None
        and n > 1
        and (math.ceil(h / 2**n) < grid[0] or math.ceil(w / 2**n) < grid[1])
    ):
        n -= 1
    return n


def _checked_stages(input_shape: tuple[int, ...], grid, stages) -> int | None:
    """The stride-2 stages of a conv pair (None for flat vectors)."""
    if len(input_shape) == 1:
        return None
    if stages is None:
        return default_stages(input_shape[1:], grid)
    check_int("stages", stages)
    if not 1 <= stages <= 6:
        raise DiscretaeError(f"stages must be from 1 to 6, got {stages}")
    return stages


def earlier_model_config(model_config: dict) -> dict:
    """A model file's network config, with what files written before ``stages`` was
    stored built: ``default_downsampling`` of the image, whatever the grid."""
    shape = model_config.get("input_shape") or []
    if "stages" in model_config or len(shape) != 3:
        return model_config
    return {**model_config, "stages": default_downsampling(int(shape[1]), int(shape[2]))}


def _networks(
    input_shape: tuple[int, ...], enc_dim: int, dec_dim: int, nets: dict, decoder: str
) -> tuple[nn.Module, nn.Module]:
    """An MLP pair for flat vectors (F,), a conv pair for images (C, H, W)."""
    if len(input_shape) == 1:
        return MLPEncoder(input_shape[0], enc_dim), MLPDecoder(input_shape[0], dec_dim)
    c, h, w = input_shape
    light = decoder == "light"
    return ConvEncoder(c, (h, w), enc_dim, **nets), ConvDecoder(
        c, (h, w), dec_dim, light=light, **nets
    )


def _quantizer(
    spec: ModelKind, kind: str, n_codes: int, n_bits: int, latent_dim: int, options: dict
) -> nn.Module:
    """The kind's quantizer; its own argument errors become DiscretaeError."""
    try:
        return spec.make_quantizer(n_codes, n_bits, latent_dim, options)
    except TypeError as e:
        raise DiscretaeError(f"bad quantizer_options for {kind!r}: {e}") from None
    except ValueError as e:
        raise DiscretaeError(str(e)) from None
