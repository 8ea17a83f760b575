"""``discretae compress``: DATA -> one ``.dae`` archive of entropy-coded codes."""

from __future__ import annotations

import os

import numpy as np
import torch

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
    max_error: int | None = None,
    rate_weight: float = 0.0,
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
    of a residual (rvq) model: fewer bytes, a coarser image. ``max_error`` adds a
    refinement: no pixel value of the decoded images is off by more than it from the
    images as the model reads them (0: lossless), more bytes the smaller it is.
    ``rate_weight`` > 0 stores codes a little further from the images that the prior finds
    cheaper (vq and rvq models; :mod:`discretae.compression.rate`). ``names``
    stores the images' file names when DATA has them (folders). Returns the archive's
    size, bytes and bits per image (header amortised), and more.
    """
    from discretae.compression.archive import parse_archive
    from discretae.compression.rate import check_rate_weight
    from discretae.compression.refine import check_max_error

    check_output(out)
    check_device(device)
    if max_error is not None:
        check_max_error(max_error)
    check_rate_weight(rate_weight)
    codec = load_codec(model, device, rate_weight=rate_weight)
    levels = codec.check_levels(levels)
    if codec.uniform and warn is not None:
        warn(
            f"model {str(model)!r} has no code prior: codes are stored at log2({codec.n_codes}) "
            "bits each; fit_prior/save_prior add one"
        )
    ds = load_model_data(data, codec.est, strict=strict, warn=warn)
    sym, refine_words = _symbols(codec, ds, batch_size, callback, levels, max_error)
    if sym is None:
        raise DiscretaeError(f"no readable images in {data!r}")
    stored = ds.names if names else None  # after the pass: files that failed are gone
    if stored is not None and any("\n" in s for s in stored):
        stored = None
        if warn is not None:
            warn("a file name holds a line break: names are not stored")
    refine = None if max_error is None else (max_error, refine_words)
    archive = codec.encode_codes(
        codec.to_codes_prefix(sym[..., :levels]), names=stored, levels=levels, refine=refine
    )
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
        "max_error": max_error,
        "rate_weight": rate_weight,
        "code_shape": [*codec.grid, levels],
        "n_codes": codec.n_codes,
        "prior": "uniform" if codec.uniform else codec.prior.kind,
        "names": stored is not None,
        "model_hash": codec.digest.hex(),
    }


def _symbols(codec, ds, batch_size: int, callback, levels: int, max_error: int | None):
    """Stream DATA through the codec: (symbols (N, h, w, T) int64 or None when no image
    was readable, the refinement's words per archive block when ``max_error`` is set).
    Images wait for the refinement a block at a time."""
    from discretae.compression.codec import BLOCK

    parts, words, pending, pending_sym = [], [], [], []

    def flush(final: bool) -> None:
        while pending and (final or sum(len(p) for p in pending) >= BLOCK):
            x, sym = np.concatenate(pending), np.concatenate(pending_sym)
            words.append(codec.refine_block(x[:BLOCK], sym[:BLOCK, ..., :levels], max_error))
            pending[:] = [x[BLOCK:]] if len(x) > BLOCK else []
            pending_sym[:] = [sym[BLOCK:]] if len(x) > BLOCK else []

    for images, _ in model_batches(ds, batch_size, stage="encode", callback=callback):
        sym = codec.encode_images(images)
        parts.append(sym)
        if max_error is not None:
            pending.append(torch.round(images.float().clamp(0, 1) * 255).to(torch.uint8).numpy())
            pending_sym.append(sym)
            flush(final=False)
    if max_error is not None:
        flush(final=True)
    return (np.concatenate(parts) if parts else None), words
