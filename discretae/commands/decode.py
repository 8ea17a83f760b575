"""``discretae decode``: a codes .npy -> one PNG per row in a new folder, or one montage."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from discretae.commands.common import Callback, load_model
from discretae.core.arrays import load_npy
from discretae.core.errors import DiscretaeError
from discretae.core.files import atomic_folder, check_output, check_output_folder
from discretae.core.images import MONTAGE_MAX, save_png, to_uint8


def decode(
    codes: str | os.PathLike,
    *,
    model: str | os.PathLike,
    out: str | os.PathLike,
    batch_size: int = 256,
    device: str = "auto",
    callback: Callback = None,
) -> dict:
    """Decode a codes .npy back to images.

    ``out`` ending in ``.png`` gets one montage of the first ``MONTAGE_MAX`` (400) rows;
    anything else is a folder that gets one PNG per row (``000000.png``, ...). The folder
    is filled under a temporary name and renamed when complete, so no half-written folder
    remains.
    """
    out = Path(out)
    as_montage = out.suffix.lower() == ".png"
    if as_montage:
        check_output(out)
    else:
        check_output_folder(out)
    array = _load_codes(codes)
    est = load_model(model, device, inference_only=True)
    if len(est.input_shape_) != 3:
        raise DiscretaeError(
            f"model {str(model)!r} was fitted on flat vectors {tuple(est.input_shape_)}, "
            "not images; decode writes PNG images (use inverse_transform from Python)"
        )
    rows = array[:MONTAGE_MAX] if as_montage else array
    n = len(rows)
    images: list[np.ndarray] = []
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            batch = rows[start : start + batch_size].astype(np.int64)
            images.append(to_uint8(est.inverse_transform(batch)))
            if callback is not None:
                callback({"stage": "decode", "done": min(start + batch_size, n), "total": n})
    stacked = np.concatenate(images)  # (N, H, W) or (N, H, W, C) uint8
    if as_montage:
        from discretae.evaluation.figures import montage

        montage(stacked if stacked.ndim == 3 else stacked.transpose(0, 3, 1, 2), out, max_images=n)
    else:
        _write_png_folder(out, stacked)
    return {
        "out": str(out),
        "kind": "montage" if as_montage else "folder",
        "n_images": int(n),
        "n_rows": int(len(array)),
        "image_shape": list(stacked.shape[1:]),
    }


def _load_codes(codes) -> np.ndarray:
    """The codes .npy: integers, at least one row."""
    array = load_npy(codes, "codes")
    if array.dtype.kind not in "iub":
        raise DiscretaeError(
            f"codes in {str(codes)!r} have dtype {array.dtype}, expected integers "
            "(the output of `discretae encode`)"
        )
    if array.ndim == 0 or len(array) == 0:
        raise DiscretaeError(f"codes in {str(codes)!r} hold no rows (shape {array.shape})")
    return array


def _write_png_folder(out: Path, images: np.ndarray) -> None:
    """images (N, H, W[, C]) uint8 -> the new folder ``out`` of 000000.png, ..."""
    width = max(6, len(str(len(images) - 1)))
    with atomic_folder(out) as tmp:
        for i, image in enumerate(images):
            save_png(tmp / f"{i:0{width}d}.png", image)
