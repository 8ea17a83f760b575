"""One reader per input format: image folders, ``.npy`` arrays, IDX files, label files.

These functions parse and validate; :mod:`discretae.data.datasets` turns what they return into an
``ImageDataset``. Every user-facing failure raises :class:`DiscretaeError` with one line
that names the file and what was expected.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import math
import os
import re
import struct
import subprocess
import warnings
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from discretae.core.arrays import read_npy
from discretae.core.errors import DiscretaeError
from discretae.data.framing import LEGACY_FRAMING, Framing, channels_first, composite, frame_pil

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# Pillow modes that hold one gray channel (bit depth aside)
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_HIGH_BIT_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
# the info keys where Pillow's getexif looks for an orientation in a PNG
_PNG_ORIENTATION_KEYS = ("exif", "Raw profile type exif", "XML:com.adobe.xmp", "xmp")
# Below this many bytes of image files, the scan decodes every file, so truncated files
# are found up front; above it only headers are read and the streaming path skips the rest.
FULL_CHECK_BYTES = 64 * 2**20
FASHION_MNIST_ENV = "DISCRETAE_FASHION_MNIST"
FASHION_MNIST_DEBIAN_PACKAGE = "dataset-fashion-mnist"
FASHION_MNIST_LABELS = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip


# ---------------------------------------------------------------- image folders
@dataclass
class FolderScan:
    """What a folder scan found. ``names`` are POSIX paths relative to the root, sorted."""

    root: Path
    names: list[str]
    sizes: list[tuple[int, int] | None]  # (H, W) after EXIF orientation; None = bad file
    modes: list[str | None]
    bad: dict[int, str] = field(default_factory=dict)  # index in names -> reason


def list_image_files(root: Path) -> tuple[list[str], int]:
    """Image files under ``root`` (recursive, sorted, hidden names skipped), and how many
    other files were seen. Symlinked folders are followed once."""
    names, others, seen = [], 0, set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a symlink cycle
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        # plain string work: a Path per file costs more than the walk itself at 100k files
        rel = os.path.relpath(dirpath, root)
        prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
        images = [f for f in filenames if not f.startswith(".")]
        kept = [prefix + f for f in images if f.lower().endswith(IMAGE_EXTENSIONS)]
        names += kept
        others += len(images) - len(kept)
    return sorted(names), others


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def probe_image(path: Path, full: bool) -> tuple[tuple[int, int], str]:
    """Return ((H, W) after EXIF orientation, mode) reading only the header, or decoding
    everything when ``full``. Raises ``ValueError(reason)`` for a bad file."""
    try:
        empty = path.stat().st_size == 0
    except OSError as e:
        raise ValueError(bad_file_reason(e)) from None
    if empty:
        raise ValueError("empty file")
    try:
        with open_image(path) as im:
            w, h = im.size
            # PNG getexif() decodes the whole image; ask only when the header has EXIF
            orient = im.getexif().get(0x0112, 1) if _may_be_rotated(im) else 1
            if full:
                im.load()
            mode = im.mode
    except Exception as e:  # Pillow raises many types for broken files
        raise ValueError(bad_file_reason(e)) from None
    return ((w, h) if orient in (5, 6, 7, 8) else (h, w)), mode


def scan_folder(
    root: Path, full_check: bool | None = None, probe: bool = True, only: list[str] | None = None
) -> FolderScan:
    """List and probe every image under ``root`` (or the files ``only`` names, relative to
    it: one image given by itself). Bad files are recorded, not raised.

    ``probe=False`` only lists the files (sizes and modes stay None): for callers that
    already know the output size and channels, the decoding stream finds bad files.
    """
    names, others = (list(only), 0) if only is not None else list_image_files(root)
    if not names:
        if others == 0:
            raise DiscretaeError(f"folder {str(root)!r} is empty")
        raise DiscretaeError(
            f"folder {str(root)!r} holds {others} file(s) but no images "
            f"(looked for {', '.join(IMAGE_EXTENSIONS)})"
        )
    if not probe:
        return FolderScan(root, names, [None] * len(names), [None] * len(names))
    if full_check is None:
        total = sum(_file_size(root / n) for n in names)
        full_check = total <= FULL_CHECK_BYTES
    scan = FolderScan(root, names, [], [])
    for i, name in enumerate(names):
        try:
            size, mode = probe_image(root / name, full_check)
        except ValueError as e:
            scan.bad[i] = str(e)
            size, mode = None, None
        scan.sizes.append(size)
        scan.modes.append(mode)
    return scan


def most_common_size(sizes: list[tuple[int, int] | None]) -> tuple[int, int]:
    """The most frequent (H, W); ties go to the one met first in sorted file order."""
    return Counter(s for s in sizes if s is not None).most_common(1)[0][0]


class ColorImageError(DiscretaeError):
    """A color image where only gray ones are taken (``gray_from_color=False``).

    ``what`` names the file or array, ``detail`` says what it holds (mode, channels).
    """

    def __init__(self, what: str, detail: str) -> None:
        super().__init__(
            f"{what} is in color ({detail}) where 1 channel (gray) is expected; "
            "color images are not turned gray here"
        )
        self.what, self.detail = what, detail


def _may_be_rotated(im: Image.Image) -> bool:
    """Whether Pillow's ``getexif`` could find an orientation: always outside PNG, and
    in a PNG only from these chunks. Asking costs about a tenth of decoding a small PNG."""
    return im.format != "PNG" or any(k in im.info for k in _PNG_ORIENTATION_KEYS)


def read_image(
    path: str | os.PathLike,
    size: tuple[int, int],
    channels: int,
    *,
    gray_from_color=True,
    framing: Framing = LEGACY_FRAMING,
) -> np.ndarray:
    """Decode one file to (channels, H, W), ``size`` = (H, W): uint8 0..255 from 8-bit
    images, float32 in [0, 1] from 16-bit and float gray ones (scaled by 1/65535, or
    clipped).

    EXIF orientation is applied; transparency is composited over ``framing.background``
    (dropped with the legacy framing); the image is brought to ``size`` by
    ``framing.resize`` (see :mod:`discretae.data.framing`); a JPEG is decoded at a
    reduced scale when much larger than ``size``; an animated file gives its first
    frame; other modes go through Pillow's L or RGB conversion. Resizing is bilinear,
    which Pillow antialiases when shrinking. With ``channels`` 1 and ``gray_from_color``
    False, a color image raises :class:`ColorImageError` instead of becoming its luma.
    Images over Pillow's pixel limit raise ``ValueError`` (see :func:`bad_file_reason`).
    """
    with open_image(path) as im:
        if channels == 1 and not gray_from_color and im.mode not in GRAY_MODES:
            raise ColorImageError(os.fspath(path), f"mode {im.mode}, 3 channels")
        if im.format == "JPEG":  # decode at 1/2, 1/4 or 1/8 scale when that is enough
            side = max(size)
            im.draft(im.mode, (side, side))
        im.load()
        if _may_be_rotated(im):
            ImageOps.exif_transpose(im, in_place=True)
        if im.mode in _HIGH_BIT_MODES:
            a = np.asarray(im, dtype=np.float32)
            a = np.clip(a if im.mode == "F" else a / 65535.0, 0.0, 1.0)
            a = np.asarray(frame_pil(Image.fromarray(a), size, framing), np.float32)[None]
            return np.repeat(a, channels, axis=0) if channels != 1 else a
        if framing.background is None and im.mode == "P" and "transparency" in im.info:
            im = im.convert("RGBA")  # Pillow's advice for palette transparency
        im = composite(im, framing)
        target = "L" if channels == 1 else "RGB"
        if im.mode != target:
            # L from color: via RGB, so CMYK/YCbCr/LAB get the same luminance weights
            im = im.convert(target if target == "RGB" or im.mode in GRAY_MODES else "RGB")
            im = im.convert(target) if im.mode != target else im
        a = np.asarray(frame_pil(im, size, framing))
    return channels_first(a)


@contextlib.contextmanager
def open_image(path: str | os.PathLike) -> Iterator[Image.Image]:
    """``Image.open`` that treats an image over Pillow's pixel limit
    (``Image.MAX_IMAGE_PIXELS``) as an error, not a warning, so it is never decoded."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        im = Image.open(path)
    with im:
        yield im


def bad_file_reason(e: Exception) -> str:
    """Why a file could not be read, in the words of the skip warning."""
    if isinstance(e, UnidentifiedImageError):
        return "not an image"
    if isinstance(e, Image.DecompressionBombError | Image.DecompressionBombWarning):
        found = re.search(r"\((\d+) pixels\)", str(e))  # the size, as Pillow words it
        size = f"{int(found.group(1)):,} pixels, " if found else ""
        return f"over Pillow's pixel limit ({size}limit {Image.MAX_IMAGE_PIXELS:,})"
    if isinstance(e, OSError) and e.errno is not None:
        # the file system's error (a link to nowhere, no permission), not the image's
        return f"cannot read: {e.strerror}"
    return f"truncated or corrupt: {e}"


def unit_float(a: np.ndarray) -> np.ndarray:
    """What :func:`read_image` gives, as float32 in [0, 1] (uint8 divided by 255)."""
    return a if a.dtype == np.float32 else a.astype(np.float32) / np.float32(255.0)


# ---------------------------------------------------------------- arrays (.npy and IDX)
def image_layout(shape: tuple[int, ...], what: str) -> tuple[str, tuple[int, ...]]:
    """Layout name and per-item shape: 'flat' (F,), 'nhw' / 'nhwc' / 'nchw' (C, H, W).

    A 4-D array is channels-last when its last axis is 1, 3 or 4 (preferred when both
    readings fit), channels-first when its second axis is.
    """
    expected = "expected (N, H, W), (N, H, W, C), (N, C, H, W) with C in 1, 3, 4, or (N, F)"
    if len(shape) not in (2, 3, 4):
        raise DiscretaeError(f"{what} has shape {shape}; {expected}")
    if shape[0] == 0 or 0 in shape:
        raise DiscretaeError(f"{what} has shape {shape}, which holds no data")
    if len(shape) == 2:
        return "flat", (shape[1],)
    if len(shape) == 3:
        return "nhw", (1, shape[1], shape[2])
    if shape[3] in (1, 3, 4):
        return "nhwc", (shape[3], shape[1], shape[2])
    if shape[1] in (1, 3, 4):
        return "nchw", (shape[1], shape[2], shape[3])
    raise DiscretaeError(f"{what} has shape {shape}, with no channel axis of size 1, 3 or 4")


def _min_max(arr: np.ndarray) -> tuple[float, float]:
    """min and max in bounded chunks (arrays may be memory-mapped); raises on NaN/inf."""
    lo, hi = math.inf, -math.inf
    step = max(1, 2**24 // max(1, math.prod(arr.shape[1:])))
    for s in range(0, arr.shape[0], step):
        block = np.asarray(arr[s : s + step])
        if block.dtype.kind == "f" and not np.isfinite(block).all():
            raise DiscretaeError("holds NaN or infinite values")
        lo, hi = min(lo, float(block.min())), max(hi, float(block.max()))
    return lo, hi


def unit_scale(arr: np.ndarray, what: str) -> float:
    """Factor that maps the array's values into [0, 1].

    uint8: 1/255. uint16: 1/65535. bool: 1. Other integers: values must lie in 0..255
    (scaled by 1/255). Floats: kept when in [0, 1], scaled by 1/255 when in [0, 255]
    with a maximum above 1; anything else raises.
    """
    kind = arr.dtype.kind
    if kind == "b":
        return 1.0
    if arr.dtype == np.uint8:
        return 1.0 / 255.0
    if arr.dtype == np.uint16:
        return 1.0 / 65535.0
    if kind not in "iuf":
        raise DiscretaeError(
            f"{what} has dtype {arr.dtype}; expected uint8, uint16, another integer type "
            "with values 0..255, bool, or float"
        )
    try:
        lo, hi = _min_max(arr)
    except DiscretaeError as e:
        raise DiscretaeError(f"{what} {e}") from None
    if kind == "f" and lo >= 0.0 and hi <= 1.0:
        return 1.0
    if lo >= 0.0 and hi <= 255.0:
        return 1.0 / 255.0
    raise DiscretaeError(
        f"{what} has values in [{lo:g}, {hi:g}]; expected [0, 1] or 0..255 (scale the data first)"
    )


_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_IMAGES = re.compile(r"^(?P<prefix>.*?)images?[-._]idx3[-._]ubyte(\.gz)?$", re.IGNORECASE)


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (plain or gzipped) as an array of its stored dtype and dims.

    Plain files are memory-mapped; gzipped ones are decompressed into memory.
    """
    try:
        if _is_gzip(path):
            with gzip.open(path, "rb") as f:
                data = f.read()
            head, nbytes = data[:260], len(data)
        else:
            with open(path, "rb") as f:
                head = f.read(260)
            data, nbytes = None, path.stat().st_size
    except (OSError, EOFError, zlib.error) as e:
        raise DiscretaeError(f"{path}: cannot read as IDX ({e})") from None
    if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _IDX_DTYPES:
        raise DiscretaeError(
            f"{path}: not an IDX file (bad magic number {head[:4].hex() or 'none'}; "
            "expected 0000 then a dtype code and the number of dims)"
        )
    ndim, dtype = head[3], np.dtype(_IDX_DTYPES[head[2]])
    offset = 4 + 4 * ndim
    if ndim == 0 or len(head) < offset:
        raise DiscretaeError(f"{path}: IDX header is cut short (ndim={ndim})")
    dims = struct.unpack(f">{ndim}I", head[4:offset])
    want = math.prod(dims) * dtype.itemsize
    if nbytes - offset != want:
        state = "truncated" if nbytes - offset < want else "longer than its header says"
        raise DiscretaeError(
            f"{path}: IDX file is {state}: header says {'x'.join(map(str, dims))} "
            f"{dtype.name} ({want} bytes of data), file holds {nbytes - offset}"
        )
    if data is None:
        return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=dims)
    return np.frombuffer(data, dtype=dtype, count=math.prod(dims), offset=offset).reshape(dims)


def looks_like_idx(path: Path) -> bool:
    """True for a file whose name or first bytes say IDX."""
    if re.search(r"idx\d", path.name, re.IGNORECASE):
        return True
    try:
        if _is_gzip(path):
            with gzip.open(path, "rb") as f:
                head = f.read(4)
        else:
            with open(path, "rb") as f:
                head = f.read(4)
    except (OSError, EOFError, zlib.error):
        return False
    return len(head) == 4 and head[:2] == b"\0\0" and head[2] in _IDX_DTYPES and 1 <= head[3] <= 4


def idx_labels_path(images: Path) -> Path | None:
    """The labels file beside an IDX images file: train-images-idx3-ubyte(.gz) ->
    train-labels-idx1-ubyte(.gz), with or without .gz."""
    name = images.name
    if not _IDX_IMAGES.match(name):
        return None
    stem = re.sub(r"\.gz$", "", name, flags=re.IGNORECASE)
    stem = re.sub("idx3", "idx1", re.sub("image", "label", stem, flags=re.I), flags=re.I)
    for cand in (stem, stem + ".gz"):
        if (images.parent / cand).is_file():
            return images.parent / cand
    return None


def _split_rank(prefix: str) -> int:
    p = prefix.lower()
    return 0 if p.startswith("train") else 1 if p.startswith(("t10k", "test")) else 2


def idx_image_files(folder: Path, split: str | None) -> list[Path]:
    """IDX images files in ``folder``: train first, then test (t10k), then others by name.

    ``split`` 'train' or 'test' keeps one. A plain file wins over its .gz twin.
    """
    found: dict[str, Path] = {}
    # match names before making paths: image folders can hold 100k files and none of these
    for name in sorted(n for n in os.listdir(folder) if _IDX_IMAGES.match(n)):
        p = folder / name
        if p.is_file():
            key = _IDX_IMAGES.match(name).group("prefix").lower()
            if key not in found or not name.lower().endswith(".gz"):
                found[key] = p
    keys = sorted(found, key=lambda k: (_split_rank(k), k))
    if split is not None:
        if split not in ("train", "test"):
            raise DiscretaeError(f"split {split!r} is not 'train' or 'test'")
        keys = [k for k in keys if _split_rank(k) == (0 if split == "train" else 1)]
    return [found[k] for k in keys]


def fashion_mnist_folder() -> Path:
    """Folder with the Fashion-MNIST IDX files: $DISCRETAE_FASHION_MNIST, else the Debian
    package's folder as ``dpkg -L`` lists it, else the standard Debian data folder."""
    env = os.environ.get(FASHION_MNIST_ENV)
    if env:
        if not Path(env).is_dir():
            raise DiscretaeError(f"{FASHION_MNIST_ENV}={env!r} is not a folder")
        return Path(env)
    try:
        out = subprocess.run(
            ["dpkg", "-L", FASHION_MNIST_DEBIAN_PACKAGE],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        listed = out.stdout.splitlines() if out.returncode == 0 else []
    except (OSError, subprocess.SubprocessError):
        listed = []
    candidates = [Path(x).parent for x in listed if x.endswith("-images-idx3-ubyte.gz")]
    candidates.append(Path("/usr/share/datasets/fashion-mnist"))
    for folder in candidates:
        if folder.is_dir() and idx_image_files(folder, None):
            return folder
    raise DiscretaeError(
        "fashion-mnist is not installed: run `apt-get install dataset-fashion-mnist`, "
        f"set {FASHION_MNIST_ENV} to a folder of its IDX files, or pass that folder as DATA"
    )


# ---------------------------------------------------------------- labels
def read_labels_npy(path: Path) -> np.ndarray:
    """(N,) int64 labels from a ``.npy`` of integers (or integral floats); -1 = unlabeled."""
    arr = np.asarray(read_npy(path))
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise DiscretaeError(f"labels {path} has shape {arr.shape}; expected (N,)")
    if arr.dtype.kind == "f" and np.isfinite(arr).all() and (arr == np.round(arr)).all():
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise DiscretaeError(f"labels {path} has dtype {arr.dtype}; expected integers")
    return arr.astype(np.int64)


def read_labels_csv(path: Path) -> list[tuple[str, str]]:
    """Rows (filename, label) of a CSV; blank rows skipped, extra columns ignored."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DiscretaeError(f"labels {path}: cannot read as CSV ({e})") from None
    short = [i + 1 for i, r in enumerate(rows) if len(r) < 2]
    if short:
        raise DiscretaeError(
            f"labels {path}: row {short[0]} has fewer than 2 columns; expected filename,label"
        )
    return [(r[0].strip(), r[1].strip()) for r in rows]


def encode_label_strings(values: list[str]) -> tuple[np.ndarray, list[str] | None]:
    """Integer strings stay integers (no names); other strings map to sorted names."""
    try:
        return np.array([int(v) for v in values], dtype=np.int64), None
    except ValueError:
        names = sorted(set(values))
        index = {n: i for i, n in enumerate(names)}
        return np.array([index[v] for v in values], dtype=np.int64), names
