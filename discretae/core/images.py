"""Images as files: float [0, 1] to uint8, and the one PNG writer."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from discretae.core.errors import DiscretaeError
from discretae.core.files import atomic_path

MONTAGE_MAX = 400  # images in one montage PNG (decode and decompress to a .png)


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Float images in [0, 1] (any shape) -> uint8, rounded, values outside clipped."""
    return np.clip(np.rint(np.asarray(images, np.float32) * 255.0), 0, 255).astype(np.uint8)


def save_png(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write one uint8 image (H, W) or (H, W, C), C in 1-4, as PNG, atomically; the
    folder is created if needed. Returns the path."""
    from PIL import Image

    a = np.asarray(image)
    if a.dtype != np.uint8 or a.ndim not in (2, 3):
        raise DiscretaeError(f"a PNG is written from uint8 (H, W[, C]), got {a.dtype} {a.shape}")
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 3 and a.shape[-1] not in (2, 3, 4):
        raise DiscretaeError(f"cannot write {a.shape[-1]}-channel images as PNG")
    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(a)).save(tmp, format="PNG")
    return Path(path)
