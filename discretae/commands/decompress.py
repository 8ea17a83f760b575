"""``discretae decompress``: a ``.dae`` archive -> one PNG per image, or one montage."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import numpy as np

from discretae.commands.common import Callback, load_codec
from discretae.core.arrays import save_npy, smallest_int_dtype
from discretae.core.devices import check_device
from discretae.core.errors import DiscretaeError
from discretae.core.files import atomic_folder, check_output, check_output_folder
from discretae.core.images import MONTAGE_MAX, save_png


def decompress(
    archive: str | os.PathLike,
    *,
    model: str | os.PathLike,
    out: str | os.PathLike,
    codes_out: str | os.PathLike | None = None,
    batch_size: int = 256,
    device: str = "auto",
    callback: Callback = None,
) -> dict:
    """Decode a ``.dae`` archive back into images.

    ``out`` is a folder that gets one PNG per image (its stored file name with a .png
    suffix, else its number), filled under a temporary name and renamed when complete; or
    a ``.png`` file that gets one montage of the first ``MONTAGE_MAX`` (400) images.
    ``codes_out`` also writes the decoded codes (.npy), exactly those that were encoded.
    """
    from discretae.compression.archive import parse_archive

    src, out = Path(archive), Path(out)
    if not src.is_file():
        raise DiscretaeError(f"archive {str(src)!r} does not exist or is not a file")
    as_montage = out.suffix.lower() == ".png"
    if as_montage:
        check_output(out)
    else:
        check_output_folder(out)
    if codes_out is not None:
        check_output(codes_out)
    check_device(device)
    data = src.read_bytes()
    parse_archive(data)  # a corrupt archive fails before the model is loaded
    codec = load_codec(model, device)
    header, names, blocks = codec.read(data)
    files = safe_names(names)
    symbols: list[np.ndarray] | None = [] if codes_out is not None else None
    batches = _decoded(codec, header, blocks, batch_size, callback, symbols)
    if as_montage:
        kept = [images[: max(0, MONTAGE_MAX - first)] for first, images in batches]
        _save_codes(codes_out, codec, header, symbols)
        from discretae.evaluation.figures import montage

        montage(np.concatenate(kept), out)
    else:
        with atomic_folder(out) as tmp:
            for first, images in batches:
                for i, image in enumerate(images, start=first):
                    name = files[i] if files else f"{i:06d}.png"
                    save_png(tmp / name, image.transpose(1, 2, 0))
            _save_codes(codes_out, codec, header, symbols)
    n = header.n_images
    return {
        "out": str(out),
        "kind": "montage" if as_montage else "folder",
        "n_images": n,
        "image_shape": list(header.shape),
        "levels": header.levels,
        "max_error": None if header.transform else header.max_error,
        "step": header.max_error if header.transform else None,
        "names": files is not None,
        "codes": str(codes_out) if codes_out is not None else None,
        "archive_bytes": len(data),
        "bytes_per_image": len(data) / n,
    }


def safe_names(names: list[str] | None) -> list[str] | None:
    """Output file names (.png) from an archive's names, or None to number the images.

    Names that would leave the output folder raise; names that collide once given the
    .png suffix fall back to numbering."""
    if names is None:
        return None
    out = []
    for name in names:
        p = PurePosixPath(name)
        if (
            not name
            or "\\" in name
            or "\0" in name
            or p.is_absolute()
            or any(part in ("", ".", "..") for part in name.split("/"))
        ):
            raise DiscretaeError(f"corrupt archive: unsafe file name {name[:80]!r}")
        out.append(str(p.with_suffix(".png")) if p.suffix else f"{name}.png")
    return out if len(set(out)) == len(out) else None


def _decoded(
    codec, header, blocks, batch_size: int, callback, symbols: list | None
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (index of the first image, images (B, C, H, W) uint8), batch by batch; the
    symbols of each block go to ``symbols`` when it is a list."""
    done = 0
    for sym, block_images in codec.decode_image_blocks(header, blocks):
        if symbols is not None:
            symbols.append(sym)
        for start in range(0, len(sym), batch_size):
            images = block_images[start : start + batch_size]
            yield done, images
            done += len(images)
            if callback is not None:
                callback({"stage": "decode", "done": done, "total": header.n_images})


def _save_codes(path, codec, header, symbols: list | None) -> None:
    """The decoded codes as ``transform`` gives them (symbols (N, h, w, l) for a prefix
    of an rvq model's levels), when asked for."""
    if path is None:
        return
    sym = np.concatenate(symbols)
    arr = codec.to_codes(sym) if header.levels == codec.n_levels else sym
    save_npy(path, arr.astype(smallest_int_dtype(codec.n_codes - 1)))
