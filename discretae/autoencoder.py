"""Discrete autoencoders (encoder + quantizer + decoder) and the registry of model kinds.

``build_autoencoder("vq" | "gumbel" | "binary", input_shape, ...)`` returns an
``Autoencoder`` whose ``config`` rebuilds it: ``build_autoencoder(**model.config)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .errors import DiscretaeError
from .networks import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder, default_downsampling
from .quantizers import BinaryQuantizer, GumbelQuantizer, VectorQuantizer
from .residual import ResidualVectorQuantizer

MODEL_KINDS = {
    "vq": VectorQuantizer,
    "gumbel": GumbelQuantizer,
    "binary": BinaryQuantizer,
    "rvq": ResidualVectorQuantizer,  # residual levels: a rate knob for the code archive
}
LATENTS = ("global", "grid")
LOSSES = ("bce", "mse")


class Autoencoder(nn.Module):
    """encoder -> quantizer -> decoder on inputs in [0, 1].

    Input x is (B, C, H, W) for images or (B, F) for flat vectors (``input_shape``
    without the batch axis). Codes are (B, *code_shape): ``code_shape`` is the latent
    grid (h, w) or () for a global latent, followed by the quantizer's code tail
    (groups for grouped Gumbel, B for binary).
    """

    def __init__(
        self, encoder: nn.Module, quantizer: nn.Module, decoder: nn.Module, config: dict
    ) -> None:
        super().__init__()
        self.encoder, self.quantizer, self.decoder = encoder, quantizer, decoder
        self.config = config
        self.input_shape = tuple(config["input_shape"])
        grid = config["grid"]
        self.latent_shape = tuple(grid) if config["latent"] == "grid" else ()
        self.code_shape = self.latent_shape + tuple(quantizer.code_tail)
        self.code_dtype = torch.uint8 if config["kind"] == "binary" else torch.int64

    def set_progress(self, frac: float) -> None:
        """Training progress in [0, 1], for schedules such as the Gumbel temperature."""
        if hasattr(self.quantizer, "set_progress"):
            self.quantizer.set_progress(frac)

    def forward(self, x: torch.Tensor) -> dict:
        """x: (B, *input_shape) in [0, 1] -> dict(x_hat, codes, aux_loss, stats, recon_loss)."""
        quantized, codes, aux_loss, stats = self.quantizer(self.encoder(x))
        logits = self.decoder(quantized)
        if self.config["loss"] == "bce":
            recon = F.binary_cross_entropy_with_logits(logits.float(), x.float())
        else:
            recon = F.mse_loss(torch.sigmoid(logits.float()), x.float())
        return {
            "x_hat": torch.sigmoid(logits),
            "codes": codes,
            "aux_loss": aux_loss,
            "stats": stats,
            "recon_loss": recon,
        }

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, *input_shape) in [0, 1] -> codes (B, *code_shape)."""
        return self.quantizer.encode(self.encoder(x))

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes: (B, *code_shape) -> x_hat (B, *input_shape) float in [0, 1]."""
        latent = self.quantizer.codes_to_latent(codes)
        return torch.sigmoid(self.decoder(latent).float())


def _check_int(name: str, value, low: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise DiscretaeError(f"{name} must be an integer >= {low}, got {value!r}")


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
) -> Autoencoder:
    """Build a discrete autoencoder.

    Args:
        kind: "vq", "gumbel" or "binary".
        input_shape: (C, H, W) for images (a conv pair) or (F,) for flat vectors (an MLP
            pair, global latent only).
        latent: "global" (one code per input) or "grid" (h x w codes per image).
        n_codes: codebook size K for vq and gumbel.
        n_bits: bits B for binary.
        latent_dim: latent dimension D for vq and gumbel (default 32); binary uses B.
        grid: (h, w) of a grid latent; None takes (H, W) / 2**stages.
        width: channels of the first conv stage (doubling per stage, at most 256).
        hidden: width of the dense layer of a global conv latent.
        loss: reconstruction loss, "bce" or "mse", on [0, 1] inputs.
        quantizer_options: extra keyword arguments of the quantizer class.

    Raises:
        DiscretaeError (a ValueError): an unknown kind, latent or loss, or bad sizes.
    """
    if kind not in MODEL_KINDS:
        raise DiscretaeError(f"unknown model kind {kind!r}; valid kinds: {', '.join(MODEL_KINDS)}")
    if latent not in LATENTS:
        raise DiscretaeError(f"latent={latent!r} is not one of {LATENTS}")
    if loss not in LOSSES:
        raise DiscretaeError(f"loss={loss!r} is not one of {LOSSES}")
    input_shape = tuple(int(s) for s in input_shape)
    if len(input_shape) not in (1, 3) or min(input_shape) < 1:
        raise DiscretaeError(f"input_shape must be (C, H, W) or (F,), got {input_shape}")
    _check_int("n_codes", n_codes)
    _check_int("n_bits", n_bits)
    _check_int("width", width)
    _check_int("hidden", hidden)
    options = dict(quantizer_options or {})
    groups = options.get("groups", 1) if kind == "gumbel" else 1
    _check_int("groups", groups)
    if kind == "binary":
        if latent_dim not in (None, n_bits):
            raise DiscretaeError(f"binary latents have n_bits={n_bits} dims; got {latent_dim=}")
        latent_dim = n_bits
    elif latent_dim is None:
        latent_dim = groups * math.ceil(32 / groups)
    _check_int("latent_dim", latent_dim)

    if len(input_shape) == 1:
        if latent == "grid":
            raise DiscretaeError("latent='grid' needs image input (N, H, W[, C]); got flat vectors")
        grid = None
        encoder = MLPEncoder(input_shape[0], latent_dim)
        decoder = MLPDecoder(input_shape[0], latent_dim)
    else:
        c, h, w = input_shape
        if latent == "grid":
            if grid is None:
                f = 2 ** default_downsampling(h, w)
                grid = (math.ceil(h / f), math.ceil(w / f))
            grid = tuple(grid)
            if len(grid) != 2 or not all(isinstance(g, int) and g >= 1 for g in grid):
                raise DiscretaeError(f"grid must be two integers >= 1, got {grid!r}")
            if grid[0] > h or grid[1] > w:
                raise DiscretaeError(f"grid {grid} is larger than the image ({h}, {w})")
        else:
            grid = None
        net = dict(latent=latent, grid=grid, width=width, hidden=hidden)
        encoder = ConvEncoder(c, (h, w), latent_dim, **net)
        decoder = ConvDecoder(c, (h, w), latent_dim, **net)

    cls = MODEL_KINDS[kind]
    try:
        if kind == "binary":
            quantizer = cls(n_bits, **options)
        else:
            quantizer = cls(n_codes, latent_dim, **options)
    except TypeError as e:
        raise DiscretaeError(f"bad quantizer_options for {kind!r}: {e}") from None
    except ValueError as e:
        raise DiscretaeError(str(e)) from None
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
    }
    return Autoencoder(encoder, quantizer, decoder, config)
