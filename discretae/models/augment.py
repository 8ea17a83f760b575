"""Batched image augmentations in torch, on whatever device the batch is on.

``augment(x, ...)`` draws an independent random transform for every image of a batch
(B, C, H, W) in [0, 1]: a small affine change (rotation, scale, shear, translation) by
one ``grid_sample``, an optional horizontal flip, a random erased rectangle, brightness
and contrast jitter, and Gaussian noise. Two calls on the same batch give the two views
that the contrastive and mutual-information objectives (:mod:`discretae.models.objectives`)
pair up. Randomness comes from torch's global generator of the batch's device, so a
seeded run (and a resumed one, whose checkpoint holds the RNG states) repeats itself.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from discretae.core.errors import DiscretaeError


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random transform; zero turns a part off.

    rotate: degrees, +-; scale: relative zoom, +-; shear: degrees, +-; translate:
    fraction of the image side, +-; flip: probability of a horizontal flip (0 for
    digits and text, where a mirror image is another symbol); erase: probability of
    erasing a rectangle of up to half of each side (off by default: on 8x8 digits
    it cost 0.07 NMI, seed 0); jitter: brightness and
    contrast change, +-; noise: standard deviation of added Gaussian noise.
    """

    rotate: float = 12.0
    scale: float = 0.12
    shear: float = 8.0
    translate: float = 0.1
    flip: float = 0.0
    erase: float = 0.0
    jitter: float = 0.2
    noise: float = 0.03

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise DiscretaeError(f"augmentation {name} must be a number >= 0, got {value!r}")
        for name in ("flip", "erase", "scale", "translate"):
            if getattr(self, name) >= 1:
                raise DiscretaeError(
                    f"augmentation {name} must be below 1, got {getattr(self, name)!r}"
                )

    def to_dict(self) -> dict:
        return asdict(self)


def _uniform(n: int, half_width: float, device) -> torch.Tensor:
    return (torch.rand(n, device=device) * 2 - 1) * half_width


def _affine(x: torch.Tensor, cfg: AugmentConfig) -> torch.Tensor:
    """One random affine map per image, sampled bilinearly; outside pixels are 0."""
    b, dev = x.shape[0], x.device
    angle = _uniform(b, math.radians(cfg.rotate), dev)
    shear = _uniform(b, math.radians(cfg.shear), dev)
    zoom = 1.0 + _uniform(b, cfg.scale, dev)
    sx = zoom * torch.where(torch.rand(b, device=dev) < cfg.flip, -1.0, 1.0)
    cos, sin, tan = torch.cos(angle), torch.sin(angle), torch.tan(shear)
    # theta maps output coordinates to input ones: rotation @ shear, divided by the zoom
    theta = torch.stack(
        [
            torch.stack(
                [cos / sx, (cos * tan - sin) / zoom, _uniform(b, 2 * cfg.translate, dev)], 1
            ),
            torch.stack(
                [sin / sx, (sin * tan + cos) / zoom, _uniform(b, 2 * cfg.translate, dev)], 1
            ),
        ],
        1,
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _erase(x: torch.Tensor, p: float) -> torch.Tensor:
    """Zero a random rectangle (each side up to half the image) in a fraction p of images."""
    b, _, h, w = x.shape
    dev = x.device
    eh = (torch.rand(b, device=dev) * 0.5 * h).long() + 1
    ew = (torch.rand(b, device=dev) * 0.5 * w).long() + 1
    top = (torch.rand(b, device=dev) * (h - eh + 1)).long()
    left = (torch.rand(b, device=dev) * (w - ew + 1)).long()
    rows = torch.arange(h, device=dev).view(1, h, 1)
    cols = torch.arange(w, device=dev).view(1, 1, w)
    inside = (
        (rows >= top.view(b, 1, 1))
        & (rows < (top + eh).view(b, 1, 1))
        & (cols >= left.view(b, 1, 1))
        & (cols < (left + ew).view(b, 1, 1))
        & (torch.rand(b, 1, 1, device=dev) < p)
    )
    return x.masked_fill(inside.unsqueeze(1), 0.0)


def augment(x: torch.Tensor, cfg: AugmentConfig | None = None) -> torch.Tensor:
    """x: (B, C, H, W) float in [0, 1] -> a randomly transformed copy, same shape, in [0, 1]."""
    if x.ndim != 4 or not x.is_floating_point():
        raise ValueError(
            f"augment needs a float batch (B, C, H, W), got {x.dtype} {tuple(x.shape)}"
        )
    cfg = cfg or AugmentConfig()
    b = x.shape[0]
    if b == 0:
        return x.clone()
    y = x.float()
    if cfg.rotate or cfg.scale or cfg.shear or cfg.translate or cfg.flip:
        y = _affine(y, cfg)
    if cfg.erase:
        y = _erase(y, cfg.erase)
    if cfg.jitter:
        shape = (b, 1, 1, 1)
        contrast = 1.0 + _uniform(b, cfg.jitter, x.device).view(shape)
        brightness = _uniform(b, cfg.jitter / 2, x.device).view(shape)
        y = y * contrast + brightness
    if cfg.noise:
        y = y + torch.randn_like(y) * cfg.noise
    return y.clamp_(0.0, 1.0).to(x.dtype)
