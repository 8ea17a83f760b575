"""``discretae compress``: DATA -> one ``.dae`` archive of entropy-coded codes."""

from __future__ import annotations

import os

import numpy as np

from discretae.commands.common import (
    Callback,
    Warn,
    load_codec,
    load_model_data,
    model_batches,
)
from discretae.core.devices import check_device
from discretae.core.errors import DiscretaeError
from discretae.core.files import atomic_path, check_output


def compress(
    data: str,
    *,
    model: str | os.PathLike,
    out: str | os.PathLike,
    levels: int | None = None,
    names: bool = True,
    batch_size: int = 256,
    device: str = "auto",
    strict: bool = False,
    callback: Callback = None,
    warn: Warn = None,
) -> dict:
    """Encode DATA with a model and write one ``.dae`` archive of entropy-coded codes.

    DATA is fitted to the model as ``encode`` fits it (resized; gray images repeated into
    RGB for an RGB model; color refused for a gray one). ``levels`` keeps the first levels
    of a residual (rvq) model: fewer bytes, a coarser image. ``names`` stores the images'
    file names when DATA has them (folders). Returns the archive's size, bytes and bits
    per image (header amortised), and more.
    """
    from discretae.compression.archive import parse_archive

    check_output(out)
    check_device(device)
    codec = load_codec(model, device)
    levels = codec.check_levels(levels)
    if codec.uniform and warn is not None:
        warn(
            f"model {str(model)!r} has no code prior: codes are stored at log2({codec.n_codes}) "
            "bits each; fit_prior/save_prior add one"
        )
    ds = load_model_data(data, codec.est, strict=strict, warn=warn)
    sym = _symbols(codec, ds, batch_size, callback)
    if sym is None:
        raise DiscretaeError(f"no readable images in {data!r}")
    stored = ds.names if names else None  # after the pass: files that failed are gone
    if stored is not None and any("\n" in s for s in stored):
        stored = None
        if warn is not None:
            warn("a file name holds a line break: names are not stored")
    archive = codec.encode_codes(codec.to_codes(sym), names=stored, levels=levels)
    with atomic_path(out) as tmp:
        tmp.write_bytes(archive)
    n = len(sym)
    header_bytes = len(archive) - 4 * sum(len(b) for b in parse_archive(archive)[2])
    return {
        "out": str(out),
        "n_images": n,
        "skipped": len(getattr(ds, "skipped", []) or []),
        "archive_bytes": len(archive),
        "bytes_per_image": len(archive) / n,
        "bits_per_image": 8 * len(archive) / n,
        "header_bytes": header_bytes,
        "levels": levels,
        "max_levels": codec.n_levels,
        "code_shape": [*codec.grid, levels],
        "n_codes": codec.n_codes,
        "prior": "uniform" if codec.uniform else "context",
        "names": stored is not None,
        "model_hash": codec.digest.hex(),
    }


def _symbols(codec, ds, batch_size: int, callback) -> np.ndarray | None:
    """Stream DATA through the codec: symbols (N, h, w, T) int64, None when no image was
    readable."""
    parts = [
        codec.encode_images(images)
        for images, _ in model_batches(ds, batch_size, stage="encode", callback=callback)
    ]
    return np.concatenate(parts) if parts else None
