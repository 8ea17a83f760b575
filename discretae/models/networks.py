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


class _ConvGeometry(nn.Module):
    """The sizes a conv encoder and its mirror decoder share: ``n_down`` stride-2 stages
    (default from the image size), the feature map ``feat_hw`` after them, and the code
    ``grid`` (default: the feature map)."""

    def _set_geometry(self, image_hw, latent, grid, n_down) -> None:
        h, w = image_hw
        self.n_down = n_down or default_downsampling(h, w)
        f = 2**self.n_down
        self.image_hw = (h, w)
        self.feat_hw = (math.ceil(h / f), math.ceil(w / f))
        self.latent = latent
        self.grid = tuple(grid) if grid is not None else self.feat_hw


class ConvEncoder(_ConvGeometry):
    """x: (B, C, H, W) in [0, 1] -> latent (B, D) ("global") or (B, h, w, D) ("grid").

    The input is zero-padded up to a multiple of 2**n_down. A grid other than the
    natural (H / 2**n_down, W / 2**n_down) is reached by adaptive average pooling.
    """

    def __init__(
        self,
        in_channels: int,
        image_hw: tuple[int, int],
        out_dim: int,
        *,
        latent: str = "global",
        grid: tuple[int, int] | None = None,
        n_down: int | None = None,
        width: int = 32,
        hidden: int = 256,
    ) -> None:
        super().__init__()
        self._set_geometry(image_hw, latent, grid, n_down)
        layers: list[nn.Module] = []
        c = in_channels
        for co in _stage_channels(self.n_down, width):
            layers += [nn.Conv2d(c, co, 4, 2, 1), _norm(co), nn.SiLU()]
            layers += [nn.Conv2d(co, co, 3, 1, 1), _norm(co), nn.SiLU()]
            c = co
        self.body = nn.Sequential(*layers)
        if latent == "grid":
            self.pool = nn.AdaptiveAvgPool2d(self.grid) if self.grid != self.feat_hw else None
            self.head = nn.Conv2d(c, out_dim, 1)
        else:
            self.head = nn.Sequential(
                nn.Flatten(),
                nn.Linear(c * self.feat_hw[0] * self.feat_hw[1], hidden),
                nn.LayerNorm(hidden),
                nn.SiLU(),
                nn.Linear(hidden, out_dim),
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


class ConvDecoder(_ConvGeometry):
    """latent (B, D) or (B, h, w, D) -> logits (B, C, H, W); mirrors ``ConvEncoder``."""

    def __init__(
        self,
        out_channels: int,
        image_hw: tuple[int, int],
        in_dim: int,
        *,
        latent: str = "global",
        grid: tuple[int, int] | None = None,
        n_down: int | None = None,
        width: int = 32,
        hidden: int = 256,
    ) -> None:
        super().__init__()
        self._set_geometry(image_hw, latent, grid, n_down)
        chans = _stage_channels(self.n_down, width)[::-1]
        c = chans[0]
        if latent == "grid":
            self.head = nn.Sequential(nn.Conv2d(in_dim, c, 1), nn.SiLU())
        else:
            self.head = nn.Sequential(
                nn.Linear(in_dim, hidden),
                nn.LayerNorm(hidden),
                nn.SiLU(),
                nn.Linear(hidden, c * self.feat_hw[0] * self.feat_hw[1]),
                nn.SiLU(),
            )
        layers: list[nn.Module] = []
        for co in chans[1:] + [width]:
            layers += [nn.Conv2d(c, c, 3, 1, 1), _norm(c), nn.SiLU()]
            layers += [nn.ConvTranspose2d(c, co, 4, 2, 1), _norm(co), nn.SiLU()]
            c = co
        layers.append(nn.Conv2d(c, out_channels, 3, 1, 1))
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


class MLPEncoder(nn.Module):
    """x: (B, F) in [0, 1] -> latent (B, D)."""

    def __init__(self, n_features: int, out_dim: int) -> None:
        super().__init__()
        h1, h2 = _mlp_widths(n_features)
        self.net = nn.Sequential(
            nn.Linear(n_features, h1),
            nn.SiLU(),
            nn.Linear(h1, h2),
            nn.SiLU(),
            nn.Linear(h2, out_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MLPDecoder(nn.Module):
    """latent (B, D) -> logits (B, F)."""

    def __init__(self, n_features: int, in_dim: int) -> None:
        super().__init__()
        h1, h2 = _mlp_widths(n_features)
        self.net = nn.Sequential(
            nn.Linear(in_dim, h2),
            nn.SiLU(),
            nn.Linear(h2, h1),
            nn.SiLU(),
            nn.Linear(h1, n_features),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)
