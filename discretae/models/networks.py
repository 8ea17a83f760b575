"""Encoders and decoders: convolutional for images of any size, MLP for flat vectors.

Latents are channels last: a "global" latent is (B, D), one vector per image; a "grid"
latent is (B, h, w, D), one vector per cell. Decoders return logits; the autoencoder
applies the sigmoid.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

MAX_CHANNELS = 256


def default_downsampling(height: int, width: int) -> int:
    """Stride-2 stages for an image: 8 px -> 1 (4x4), 28 -> 2 (7x7), 32 -> 2 (8x8), 64 -> 3."""
    side = min(height, width)
    return max(1, min(4, int(math.floor(math.log2(max(side, 1) / 6.0)))))


def _norm(c: int) -> nn.Module:
    # normalised layers trained the short default runs markedly better on digits
    return nn.GroupNorm(math.gcd(8, c), c)


def _stage_channels(n_down: int, width: int) -> list[int]:
    return [min(width * 2**i, MAX_CHANNELS) for i in range(n_down)]


class _ConvNet(nn.Module):
    """What a conv encoder and its mirror decoder share: the arguments, and the sizes
    they derive: ``n_down`` stride-2 stages (default from the image size), the feature
    map ``feat_hw`` after them, and the code ``grid`` (default: the feature map).

    Args:
        channels: image channels C (the encoder's input, the decoder's output).
        image_hw: (H, W) of the images.
        dim: latent dimension D (the encoder's output, the decoder's input).
        latent: "global" (B, D) or "grid" (B, h, w, D).
        grid: (h, w) of a grid latent; None: the feature map.
        n_down: stride-2 stages; None: ``default_downsampling(H, W)``.
        width: channels of the first stage, doubling per stage up to ``MAX_CHANNELS``.
        hidden: width of the dense layer of a global latent.
    """

    def __init__(
        self,
        channels: int,
        image_hw: tuple[int, int],
        dim: int,
        *,
        latent: str = "global",
        grid: tuple[int, int] | None = None,
        n_down: int | None = None,
        width: int = 32,
        hidden: int = 256,
    ) -> None:
        super().__init__()
        h, w = image_hw
        self.n_down = n_down or default_downsampling(h, w)
        f = 2**self.n_down
        self.image_hw = (h, w)
        self.feat_hw = (math.ceil(h / f), math.ceil(w / f))
        self.latent = latent
        self.grid = tuple(grid) if grid is not None else self.feat_hw
        self._build(channels, dim, width, hidden)

    def _build(self, channels: int, dim: int, width: int, hidden: int) -> None:
        raise NotImplementedError


class ConvEncoder(_ConvNet):
    """x: (B, C, H, W) in [0, 1] -> latent (B, D) ("global") or (B, h, w, D) ("grid").

    The input is zero-padded up to a multiple of 2**n_down. A grid other than the
    natural (H / 2**n_down, W / 2**n_down) is reached by adaptive average pooling.
    """

    def _build(self, channels: int, dim: int, width: int, hidden: int) -> None:
        layers: list[nn.Module] = []
        c = channels
        for co in _stage_channels(self.n_down, width):
            layers += [nn.Conv2d(c, co, 4, 2, 1), _norm(co), nn.SiLU()]
            layers += [nn.Conv2d(co, co, 3, 1, 1), _norm(co), nn.SiLU()]
            c = co
        self.body = nn.Sequential(*layers)
        if self.latent == "grid":
            self.pool = nn.AdaptiveAvgPool2d(self.grid) if self.grid != self.feat_hw else None
            self.head = nn.Conv2d(c, dim, 1)
        else:
            self.head = nn.Sequential(
                nn.Flatten(),
                nn.Linear(c * self.feat_hw[0] * self.feat_hw[1], hidden),
                nn.LayerNorm(hidden),
                nn.SiLU(),
                nn.Linear(hidden, dim),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = 2**self.n_down
        h, w = x.shape[-2:]
        x = F.pad(x, (0, (-w) % f, 0, (-h) % f))
        y = self.body(x)
        if self.latent == "grid":
            if self.pool is not None:
                y = self.pool(y)
            return self.head(y).permute(0, 2, 3, 1)
        return self.head(y)


class ConvDecoder(_ConvNet):
    """latent (B, D) or (B, h, w, D) -> logits (B, C, H, W); mirrors ``ConvEncoder``.

    ``light``: the last transposed convolution gives the image's channels directly,
    without the full-resolution stage (a 3x3 convolution of ``width`` channels, its norm
    and the output convolution), which costs over half of a training step on the CPU.
    """

    def __init__(self, *args, light: bool = False, **kwargs) -> None:
        self.light = light
        super().__init__(*args, **kwargs)

    def _build(self, channels: int, dim: int, width: int, hidden: int) -> None:
        chans = _stage_channels(self.n_down, width)[::-1]
        c = chans[0]
        if self.latent == "grid":
            self.head = nn.Sequential(nn.Conv2d(dim, c, 1), nn.SiLU())
        else:
            self.head = nn.Sequential(
                nn.Linear(dim, hidden),
                nn.LayerNorm(hidden),
                nn.SiLU(),
                nn.Linear(hidden, c * self.feat_hw[0] * self.feat_hw[1]),
                nn.SiLU(),
            )
        layers: list[nn.Module] = []
        if self.light:
            # the last up-sampling stage gives the image itself: no full-resolution stage
            for i, co in enumerate(chans[1:] + [channels]):
                layers += [nn.Conv2d(c, c, 3, 1, 1), _norm(c), nn.SiLU()]
                layers.append(nn.ConvTranspose2d(c, co, 4, 2, 1))
                if i < len(chans) - 1:
                    layers += [_norm(co), nn.SiLU()]
                c = co
        else:
            for co in chans[1:] + [width]:
                layers += [nn.Conv2d(c, c, 3, 1, 1), _norm(c), nn.SiLU()]
                layers += [nn.ConvTranspose2d(c, co, 4, 2, 1), _norm(co), nn.SiLU()]
                c = co
            layers.append(nn.Conv2d(c, channels, 3, 1, 1))
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.latent == "grid":
            y = self.head(z.permute(0, 3, 1, 2))
            if self.grid != self.feat_hw:
                y = F.interpolate(y, size=self.feat_hw, mode="nearest")
        else:
            y = self.head(z).view(z.shape[0], -1, *self.feat_hw)
        h, w = self.image_hw
        return self.body(y)[..., :h, :w]


def _mlp_widths(n_features: int) -> tuple[int, int]:
    h1 = 512 if n_features >= 256 else 256
    return h1, h1 // 2


class _MLP(nn.Module):
    """Linear layers through ``sizes``, SiLU between them: (B, sizes[0]) -> (B, sizes[-1])."""

    def __init__(self, *sizes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for a, b in zip(sizes, sizes[1:], strict=False):
            layers += [nn.SiLU()] if layers else []
            layers.append(nn.Linear(a, b))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MLPEncoder(_MLP):
    """x: (B, F) in [0, 1] -> latent (B, D); hidden widths from ``_mlp_widths(F)``."""

    def __init__(self, n_features: int, out_dim: int) -> None:
        h1, h2 = _mlp_widths(n_features)
        super().__init__(n_features, h1, h2, out_dim)


class MLPDecoder(_MLP):
    """latent (B, D) -> logits (B, F); mirrors ``MLPEncoder``."""

    def __init__(self, n_features: int, in_dim: int) -> None:
        h1, h2 = _mlp_widths(n_features)
        super().__init__(in_dim, h2, h1, n_features)
