"""How an image of any size and mode becomes one of the model's working size.

- Transparency: RGBA, LA and palette images with a transparent colour are composited
  over ``background`` (white by default), so a transparent pixel looks the same in every
  file whatever colour it hides.
- Aspect ratio: ``pad`` (the default) scales the whole image into the working size and
  fills the margins with ``background``; ``crop`` scales it to cover the working size
  and cuts the centre; ``stretch`` scales each side on its own (what model files from
  before these settings did, and what they keep doing).
- The working size: given (``--image-size``), or for a folder the most common image
  size with its longer side brought down to ``DEFAULT_SIDE`` pixels when it is larger.

Files go through Pillow (:func:`frame_pil`); arrays (``.npy``, IDX) through torch
(:func:`frame_tensor`), with the same geometry (:func:`placement`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from discretae.core.errors import DiscretaeError

RESIZE_MODES = ("pad", "crop", "stretch")
DEFAULT_SIDE = 32  # px: the longer side of a folder's default working size
NAMED_COLOURS = {"white": (255, 255, 255), "black": (0, 0, 0), "gray": (128, 128, 128)}


@dataclass(frozen=True)
class Framing:
    """How images are brought to the working size: ``resize`` one of ``RESIZE_MODES``,
    ``background`` the RGB colour (0-255) under transparent pixels and in pad margins;
    None keeps what model files from before these settings did: alpha dropped, margins
    black."""

    resize: str = "pad"
    background: tuple[int, int, int] | None = (255, 255, 255)

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise DiscretaeError(f"resize {self.resize!r} is not one of {', '.join(RESIZE_MODES)}")
        if self.background is None:
            return
        bg = tuple(self.background)
        if len(bg) != 3 or not all(isinstance(v, int) and 0 <= v <= 255 for v in bg):
            raise DiscretaeError(f"background {self.background!r} should be 3 integers 0-255")

    def gray(self) -> int:
        """The background as one gray level (ITU-R 601 luma, as Pillow's L conversion)."""
        r, g, b = self.background or (0, 0, 0)
        return int(round(0.299 * r + 0.587 * g + 0.114 * b))


# what model files and checkpoints written before these settings existed did: stretch
# to the data's own size, alpha dropped (their params read as LEGACY_PARAMS)
LEGACY_FRAMING = Framing(resize="stretch", background=None)
LEGACY_PARAMS = {"image_size": None, "resize": "stretch", "background": "white"}


def parse_background(text: str) -> tuple[int, int, int]:
    """``white``, ``black``, ``gray`` or ``#RRGGBB`` -> (r, g, b)."""
    if not isinstance(text, str):
        raise DiscretaeError(f"background {text!r} should be a colour name or #RRGGBB")
    key = text.strip().lower()
    if key in NAMED_COLOURS:
        return NAMED_COLOURS[key]
    m = re.fullmatch(r"#?([0-9a-f]{6})", key)
    if m is None:
        raise DiscretaeError(
            f"background {text!r} should be white, black, gray or a colour like #RRGGBB"
        )
    v = m.group(1)
    return int(v[0:2], 16), int(v[2:4], 16), int(v[4:6], 16)


def parse_image_size(text: str) -> tuple[int, int] | int:
    """``"64x48"`` -> (64, 48) as (H, W); ``"64"`` -> 64, the longer side."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?", text)
    if m is None or int(m.group(1)) < 1 or (m.group(2) is not None and int(m.group(2)) < 1):
        raise DiscretaeError(
            f"image size {text!r} should be HxW (e.g. 64x64) or one number for the longer side"
        )
    return int(m.group(1)) if m.group(2) is None else (int(m.group(1)), int(m.group(2)))


def longer_side_to(hw: tuple[int, int], side: int) -> tuple[int, int]:
    """(H, W) scaled so its longer side is ``side`` (aspect kept, each side >= 1)."""
    h, w = hw
    scale = side / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def default_working_size(common_hw: tuple[int, int], side: int = DEFAULT_SIDE) -> tuple[int, int]:
    """A folder's working size: its most common size, brought down to ``side`` px on the
    longer side when larger (never enlarged)."""
    return tuple(common_hw) if max(common_hw) <= side else longer_side_to(common_hw, side)


def placement(src_hw, dst_hw, resize: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """Where a (h, w) image lands in a (H, W) frame: its scaled size and the offset of its
    top-left corner (negative for ``crop``: the part cut off)."""
    (h, w), (dh, dw) = src_hw, dst_hw
    if resize == "stretch":
        return (dh, dw), (0, 0)
    pick = min if resize == "pad" else max
    scale = pick(dh / h, dw / w)
    sh, sw = max(1, round(h * scale)), max(1, round(w * scale))
    if resize == "pad":
        sh, sw = min(sh, dh), min(sw, dw)
    else:
        sh, sw = max(sh, dh), max(sw, dw)
    return (sh, sw), ((dh - sh) // 2, (dw - sw) // 2)


def composite(im: Image.Image, framing: Framing) -> Image.Image:
    """An image with any transparency flattened over the background (RGB or L out;
    other modes are returned as they are). Without a background, alpha is dropped."""
    if framing.background is None:
        return im
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif im.mode == "PA":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "RGBa", "LA", "La"):
        gray = im.mode in ("LA", "La")
        rgba = im.convert("RGBA")
        base = Image.new("RGBA", rgba.size, (*framing.background, 255))
        im = Image.alpha_composite(base, rgba).convert("L" if gray else "RGB")
    elif "transparency" in im.info and im.mode in ("L", "RGB"):
        im = im.convert("RGBA" if im.mode == "RGB" else "LA")
        return composite(im, framing)
    return im


def frame_pil(im: Image.Image, size: tuple[int, int], framing: Framing) -> Image.Image:
    """A composited L, RGB or F image brought to ``size`` (H, W) by ``framing.resize``."""
    h, w = size
    if im.size == (w, h):
        return im
    (sh, sw), (top, left) = placement((im.height, im.width), size, framing.resize)
    scaled = im.resize((sw, sh), Image.BILINEAR) if (im.height, im.width) != (sh, sw) else im
    if (sh, sw) == (h, w):
        return scaled
    if framing.resize == "crop":
        return scaled.crop((-left, -top, -left + w, -top + h))
    bg = framing.background or (0, 0, 0)
    fill = bg if im.mode == "RGB" else framing.gray() / 255.0 if im.mode == "F" else framing.gray()
    canvas = Image.new(im.mode, (w, h), fill)
    canvas.paste(scaled, (left, top))
    return canvas


def frame_tensor(x: torch.Tensor, size: tuple[int, int], framing: Framing) -> torch.Tensor:
    """x: (N, C, H, W) float in [0, 1] -> (N, C, *size) by ``framing.resize`` (bilinear,
    antialiased when shrinking; pad margins in the background colour)."""
    h, w = size
    if tuple(x.shape[-2:]) == (h, w):
        return x
    (sh, sw), (top, left) = placement(tuple(x.shape[-2:]), size, framing.resize)
    y = F.interpolate(x, size=(sh, sw), mode="bilinear", antialias=True, align_corners=False)
    if (sh, sw) == (h, w):
        return y
    if framing.resize == "crop":
        return y[..., -top : -top + h, -left : -left + w]
    c = x.shape[1]
    bg = (framing.background or (0, 0, 0)) if c == 3 else (framing.gray(),) * c
    out = torch.tensor(bg[:c], dtype=x.dtype).div(255.0).view(1, c, 1, 1).repeat(len(x), 1, h, w)
    out[..., top : top + sh, left : left + sw] = y
    return out


def check_size(size) -> tuple[int, int]:
    """An (H, W) of positive ints, or a clear error."""
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError):
        raise DiscretaeError(f"image size {size!r} should be (H, W)") from None
    if h < 1 or w < 1:
        raise DiscretaeError(f"image size {size!r} should be positive")
    return h, w


def channels_first(a: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, C) -> (C, H, W), the layout readers return."""
    return a[None] if a.ndim == 2 else np.ascontiguousarray(a.transpose(2, 0, 1))
