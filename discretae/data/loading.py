"""Image collections: one ``load_dataset`` in front of one reader per format.

``load_dataset(spec)`` takes, in this order of precedence:

- an existing path:
  - a folder of images (png, jpg/jpeg, bmp, gif first frame, webp, tif/tiff), read
    recursively in sorted order; hidden files and folders are skipped. When it has
    subfolders, each image's label is its first-level subfolder name (``label_names``
    sorted, as torchvision's ImageFolder). Images lying directly in the root beside
    class subfolders are kept with label -1 (unlabeled), with a warning;
  - a folder holding IDX files (``*-images-idx3-ubyte[.gz]``): train, then test;
  - a ``.npy`` array: (N, H, W), (N, H, W, C), (N, C, H, W) with C in 1, 3, 4
    (channels-last preferred when both readings fit), or (N, F) flat vectors;
  - an IDX images file, plain or gzipped, with its labels file beside it when present;
- ``FOLDER:train`` / ``FOLDER:test``: one split of an IDX folder;
- ``digits``: scikit-learn's 1797 8x8 digits (values 0..16 scaled by 1/16), with labels;
- ``fashion-mnist``, ``fashion-mnist:train``, ``fashion-mnist:test``: the IDX files from
  ``$DISCRETAE_FASHION_MNIST``, else from the Debian package ``dataset-fashion-mnist``.

Every item is a float32 tensor in [0, 1], (C, H, W) for images or (F,) for flat vectors
(``shape`` says which), and an int label, -1 when unlabeled.

Images of mixed sizes are resized (bilinear, antialiased when shrinking) to ``image_size``
or, when it is None, to the most common size in the folder (read from headers only).
``channels`` 1 gives gray, 3 gives RGB; when None, a folder gives 1 if every image is a
gray mode, else 3, and an array keeps its own channel count. Alpha is dropped. With
``gray_from_color=False`` and ``channels`` 1, a color image raises ``ColorImageError``
instead of becoming gray: an array when it is loaded, a folder's file when it is decoded.

Array values: uint8 / 255, uint16 / 65535, bool as 0/1, other integers must lie in 0..255,
floats in [0, 1] are kept and floats in [0, 255] (max above 1) are divided by 255;
anything else raises. Flat vectors follow the same rule.

Unreadable files in a folder (not an image, zero bytes, truncated): with ``strict`` the
first one raises ``DiscretaeError`` naming it. Otherwise they are dropped and reported in
one call to ``warn`` that counts them and names the first few. When both ``image_size``
and ``channels`` are given (a fitted model fixes them) files are only listed. Otherwise
every file is probed: decoded in full when the folder holds at most 64 MiB of image
files, so all bad files are found at load time, by header only in larger folders. A
file that then fails to decode in a DataLoader worker comes back as a marker, is left
out of the batch, and is reported in one warning at the end of that pass, after which
it is removed from ``names``, ``labels`` and ``len``. So after a complete pass the rows
yielded always line up with ``names``.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import numpy as np

from discretae.core.arrays import read_npy
from discretae.core.errors import DiscretaeError
from discretae.data.datasets import ArrayDataset, FolderDataset, ImageDataset, skip_message
from discretae.data.framing import LEGACY_FRAMING, Framing
from discretae.data.readers import (
    FASHION_MNIST_LABELS,
    GRAY_MODES,
    IMAGE_EXTENSIONS,
    encode_label_strings,
    fashion_mnist_folder,
    idx_image_files,
    idx_labels_path,
    looks_like_idx,
    most_common_size,
    read_idx,
    read_labels_csv,
    read_labels_npy,
    scan_folder,
)

Warn = Callable[[str], None]
_NAMES = "digits, fashion-mnist, fashion-mnist:train, fashion-mnist:test"


def _default_warn(message: str) -> None:
    warnings.warn(message, UserWarning, stacklevel=3)


def _labels_for_array(path: Path | None, n: int) -> np.ndarray | None:
    if path is None:
        return None
    if path.suffix.lower() == ".csv":
        raise DiscretaeError(
            f"labels {path}: a CSV of filename,label needs a folder of images; "
            "pass a .npy of labels for arrays"
        )
    labels = read_labels_npy(path)
    if len(labels) != n:
        raise DiscretaeError(f"labels {path} has {len(labels)} rows but the data has {n} images")
    return labels


def _labels_from_csv(path: Path, names: list[str], warn: Warn):
    rows = read_labels_csv(path)
    by_rel = {n: i for i, n in enumerate(names)}
    base = Counter(PurePosixPath(n).name for n in names)
    by_base = {
        PurePosixPath(n).name: i for i, n in enumerate(names) if base[PurePosixPath(n).name] == 1
    }

    def find(key: str) -> int | None:
        key = key.replace("\\", "/").removeprefix("./")
        return by_rel.get(key, by_base.get(key))

    if rows and find(rows[0][0]) is None:
        rows = rows[1:]  # a header line
    found = [(find(f), lab) for f, lab in rows]
    unmatched = sum(i is None for i, _ in found)
    hits = {i: lab for i, lab in found if i is not None}
    if not hits:
        raise DiscretaeError(
            f"labels {path}: none of its {len(rows)} rows names an image in the folder "
            "(expected filename,label with names relative to it)"
        )
    values, label_names = encode_label_strings(list(hits.values()))
    labels = np.full(len(names), -1, dtype=np.int64)
    labels[list(hits)] = values
    if unmatched or len(hits) < len(names):
        warn(
            f"labels {path}: {len(names) - len(hits)} image(s) have no row (label -1) and "
            f"{unmatched} row(s) name no image in the folder"
        )
    return labels, label_names


def _load_folder(
    root: Path, labels_path, image_size, channels, strict, warn, gray_from_color, framing,
    only: list[str] | None = None,
) -> FolderDataset:  # fmt: skip
    """A folder's images, or with ``only`` (names relative to root) just those: one image
    file given as DATA is a folder of one, which it names when it cannot be read."""
    if channels not in (None, 1, 3):
        raise DiscretaeError(f"channels={channels} is not 1 or 3 for a folder of images")
    # with size and channels fixed (a fitted model's), probing every file up front only
    # repeats what the decoding stream does: it drops bad files with one warning too
    probe = image_size is None or channels is None or only is not None  # one file: check it now
    scan = scan_folder(root, probe=probe, only=only)
    names = scan.names
    if (strict or only is not None) and scan.bad:
        i = min(scan.bad)
        raise DiscretaeError(f"{root / names[i]}: {scan.bad[i]}")
    if len(scan.bad) == len(names):
        bad = [(names[i], r) for i, r in scan.bad.items()]
        raise DiscretaeError(f"no readable images in {root}: {skip_message(str(root), bad)}")
    # labels are matched over all image files, so a labels file need not know which are bad
    labels, label_names = None, None
    if labels_path is not None:
        if labels_path.suffix.lower() == ".csv":
            labels, label_names = _labels_from_csv(labels_path, names, warn)
        else:
            labels = _labels_for_array(labels_path, len(names))
    elif any("/" in n for n in names):
        top = [n.split("/", 1)[0] if "/" in n else None for n in names]
        label_names = sorted({t for t in top if t is not None})
        index = {t: k for k, t in enumerate(label_names)}
        labels = np.array([index.get(t, -1) for t in top], dtype=np.int64)
        loose = sum(t is None for t in top)
        if loose:
            warn(
                f"{loose} image(s) lie directly in {root} beside class subfolders; "
                "they get label -1 (unlabeled)"
            )
    keep = [i for i in range(len(names)) if i not in scan.bad]
    if scan.bad:
        warn(skip_message(str(root), [(names[i], scan.bad[i]) for i in sorted(scan.bad)]))
    if channels is None:
        channels = 1 if all(scan.modes[i] in GRAY_MODES for i in keep) else 3
    size = tuple(image_size) if image_size is not None else most_common_size(scan.sizes)
    return FolderDataset(
        root,
        [names[i] for i in keep],
        size=size,
        channels=channels,
        labels=None if labels is None else labels[keep],
        label_names=label_names,
        skipped=[names[i] for i in sorted(scan.bad)],
        strict=strict,
        warn=warn,
        gray_from_color=gray_from_color,
        framing=framing,
    )


def _load_idx(files: list[Path], source: str, label_names=None, **kw) -> ArrayDataset:
    arrays, labels = [read_idx(f) for f in files], []
    for f, a in zip(files, arrays, strict=True):
        lp = idx_labels_path(f)
        lab = read_idx(lp) if lp is not None else None
        if lab is not None and (lab.ndim != 1 or len(lab) != len(a)):
            raise DiscretaeError(f"labels {lp} has shape {lab.shape} but {f} has {len(a)} images")
        labels.append(lab)
    shapes = {a.shape[1:] for a in arrays}
    if len(shapes) > 1:
        raise DiscretaeError(
            f"IDX files {', '.join(map(str, files))} hold images of different "
            f"shapes {sorted(shapes)}"
        )
    raw = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
    y = None if any(lab is None for lab in labels) else np.concatenate(labels).astype(np.int64)
    return ArrayDataset(
        raw, source, labels=y, label_names=label_names if y is not None else None, **kw
    )


def _load_idx_folder(folder: Path, split, source, label_names=None, **kw) -> ArrayDataset:
    files = idx_image_files(folder, split)
    if not files:
        raise DiscretaeError(
            f"folder {str(folder)!r} holds no IDX images files"
            + (f" for split {split!r}" if split else "")
        )
    return _load_idx(files, source, label_names, **kw)


def _load_digits(**kw) -> ArrayDataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    return ArrayDataset(
        d.images.astype(np.float32) / np.float32(16.0),
        "digits",
        labels=d.target.astype(np.int64),
        label_names=[str(i) for i in range(10)],
        source="digits (scikit-learn, 1797 images 8x8)",
        **kw,
    )


def _check_args(image_size, channels):
    if image_size is not None:
        try:
            ok = len(tuple(image_size)) == 2 and all(int(s) == s and s > 0 for s in image_size)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise DiscretaeError(f"image_size={image_size!r} is not (H, W) with H, W >= 1")
    if channels is not None and channels not in (1, 3, 4):
        raise DiscretaeError(f"channels={channels!r} is not 1, 3 or 4")


def load_dataset(
    spec: str | os.PathLike,
    *,
    labels: str | os.PathLike | None = None,
    image_size: tuple[int, int] | None = None,
    channels: int | None = None,
    gray_from_color: bool = True,
    strict: bool = False,
    warn: Warn | None = None,
    framing: Framing | None = None,
) -> ImageDataset:
    """Open a folder, ``.npy``, IDX file or folder, or a named dataset (see module docs).

    labels: a ``.npy`` of N integer labels (folder order: sorted relative names, bad files
    included), or for folders a CSV of ``filename,label`` (relative name or unique
    basename; string labels become ``label_names``). It overrides subfolder labels.
    image_size: (H, W) to resize to. channels: 1 or 3. gray_from_color: False refuses,
    with ``ColorImageError``, to turn color images gray when ``channels`` is 1 (an array
    at once, a folder's file when the stream reaches it). strict: raise on the first
    unreadable file instead of skipping it. warn: called with each warning (default:
    ``warnings.warn``). framing: how images meet ``image_size`` (aspect, transparency;
    :mod:`discretae.data.framing`); None keeps the legacy stretch with alpha dropped.
    """
    warn = warn or _default_warn
    framing = framing or LEGACY_FRAMING
    _check_args(image_size, channels)
    size = None if image_size is None else (int(image_size[0]), int(image_size[1]))
    lab = None if labels is None else Path(labels).expanduser()
    if lab is not None and not lab.is_file():
        raise DiscretaeError(f"labels file {str(lab)!r} does not exist")
    kw = {
        "image_size": size,
        "channels": channels,
        "gray_from_color": gray_from_color,
        "framing": framing,
    }
    text = os.fspath(spec)
    path = Path(text).expanduser()
    base, _, split = text.rpartition(":") if ":" in text else (text, "", None)
    if path.is_dir():
        if idx_image_files(path, None):
            ds = _load_idx_folder(path, None, str(path), **kw)
        else:
            return _load_folder(path, lab, size, channels, strict, warn, gray_from_color, framing)
    elif path.is_file():
        if path.suffix.lower() == ".npy":
            ds = ArrayDataset(read_npy(path), str(path), **kw)
        elif looks_like_idx(path):
            ds = _load_idx([path], str(path), **kw)
        elif path.name.lower().endswith(IMAGE_EXTENSIONS):
            return _load_folder(
                path.parent, lab, size, channels, strict, warn, gray_from_color, framing,
                only=[path.name],
            )  # fmt: skip
        else:
            raise DiscretaeError(
                f"{text}: unsupported file; expected an image, a folder of images, a .npy "
                "array or an IDX file"
            )
    elif text.lower() == "digits":
        ds = _load_digits(**kw)
    elif base.lower() == "fashion-mnist" and split in (None, "train", "test"):
        folder = fashion_mnist_folder()
        ds = _load_idx_folder(folder, split, f"{text} ({folder})", FASHION_MNIST_LABELS, **kw)
    elif split in ("train", "test") and Path(base).expanduser().is_dir():
        ds = _load_idx_folder(Path(base).expanduser(), split, text, **kw)
    elif os.sep in text or "." in PurePosixPath(text).name:
        raise DiscretaeError(f"no such file or folder: {text!r}")
    else:
        raise DiscretaeError(f"{text!r} is not a file, a folder or a dataset name ({_NAMES})")
    if lab is not None:
        ds.labels = _labels_for_array(lab, len(ds))
        ds.label_names = None
    return ds
