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


class Upsample(nn.ConvTranspose2d):
    """A 4x4 transposed convolution of stride 2 (padding 1): the decoder's up-sampling.

    Without gradients, a layer of at most ``SHUFFLE_MAX_OUT`` output channels (a
    decoder's image layer) runs as the same map written as a 3x3 convolution to four
    times the channels followed by a pixel shuffle (each output pixel of the transposed
    convolution reads a 2x2 block of a 3x3 input neighbourhood). The parameters, and so
    the model files, are those of ``nn.ConvTranspose2d``; the two ways differ by float
    rounding only. One CPU thread, 128 images, us an image, transposed / shuffle:
    32 -> 1 channels at 14x14 56 / 23, 32 -> 3 at 14x14 58 / 27, 32 -> 3 at 32x32 274 /
    236; but 32 -> 8 at 14x14 54 / 63, 64 -> 32 at 7x7 43 / 94 (the 3x3 form does 9/4
    of the work, which pays only where few output channels leave the transposed
    convolution's kernel idle).
    """

    SHUFFLE_MAX_OUT = 4

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(c_in, c_out, 4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or self.out_channels > self.SHUFFLE_MAX_OUT:
            return super().forward(x)
        bias = None if self.bias is None else self.bias.repeat_interleave(4)
        return F.pixel_shuffle(F.conv2d(x, shuffle_weight(self.weight), bias, padding=1), 2)


def shuffle_weight(w: torch.Tensor) -> torch.Tensor:
    """A stride-2, padding-1 transposed convolution's 4x4 weight (C_in, C_out, 4, 4) as
    the 3x3 weight (4 C_out, C_in, 3, 3) of a convolution whose output, pixel-shuffled by
    2, is the transposed convolution's. Output row 2m + a reads input rows m + d, d in
    {-1, 0, 1}, through kernel row a + 1 - 2d when that lies in [0, 4) (columns alike)."""
    c_in, c_out = w.shape[:2]
    out = w.new_zeros(c_out, 2, 2, c_in, 3, 3)
    for a in range(2):
        for b in range(2):
            for d in (-1, 0, 1):
                for e in (-1, 0, 1):
                    k, ell = a + 1 - 2 * d, b + 1 - 2 * e
                    if 0 <= k < 4 and 0 <= ell < 4:
                        out[:, a, b, :, d + 1, e + 1] = w[:, :, k, ell].T
    return out.reshape(4 * c_out, c_in, 3, 3)


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
                layers.append(Upsample(c, co))
                if i < len(chans) - 1:
                    layers += [_norm(co), nn.SiLU()]
                c = co
        else:
            for co in chans[1:] + [width]:
                layers += [nn.Conv2d(c, c, 3, 1, 1), _norm(c), nn.SiLU()]
                layers += [Upsample(c, co), _norm(co), nn.SiLU()]
                c = co
            layers.append(nn.Conv2d(c, channels, 3, 1, 1))
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.latent == "grid":
            # made contiguous: the permuted view is channels-last in memory, which every
            # layer after would keep, and group norm on channels-last ran 6x slower
            # (one CPU thread, 32 channels at 14x14: 13 us an image against 2)
            y = self.head(z.permute(0, 3, 1, 2).contiguous())
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
