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

import operator
import os
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from discretae.core.errors import DiscretaeError
from discretae.data.readers import (
    FASHION_MNIST_LABELS,
    GRAY_MODES,
    ColorImageError,
    encode_label_strings,
    fashion_mnist_folder,
    idx_image_files,
    idx_labels_path,
    image_layout,
    looks_like_idx,
    most_common_size,
    read_idx,
    read_image,
    read_labels_csv,
    read_labels_npy,
    read_npy,
    scan_folder,
    unit_float,
    unit_scale,
)

Warn = Callable[[str], None]
_NAMES = "digits, fashion-mnist, fashion-mnist:train, fashion-mnist:test"
_SHOW = 5  # bad files named in a warning


def _default_warn(message: str) -> None:
    warnings.warn(message, UserWarning, stacklevel=3)


def _skip_message(where: str, bad: list[tuple[str, str]]) -> str:
    shown = ", ".join(f"{n} ({r})" for n, r in bad[:_SHOW])
    more = f", and {len(bad) - _SHOW} more" if len(bad) > _SHOW else ""
    return f"skipped {len(bad)} unreadable file(s) in {where}: {shown}{more}"


def auto_workers(n: int) -> int:
    # worker start-up costs more than decoding a small folder
    return 0 if n < 1024 else max(1, min(4, (os.cpu_count() or 1) - 1))


def _to_channels(x: torch.Tensor, c_out: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, c_out, H, W): alpha dropped, gray repeated, RGB to luma."""
    if x.shape[1] == 4 and c_out != 4:
        x = x[:, :3]
    if x.shape[1] == c_out:
        return x
    if x.shape[1] == 1:
        return x.expand(-1, c_out, -1, -1).contiguous()
    w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype).view(1, 3, 1, 1)  # ITU-R 601
    return (x * w).sum(dim=1, keepdim=True)


class ImageDataset(Dataset):
    """A collection of images (or flat vectors) with optional integer labels.

    Attributes: ``shape`` (C, H, W) or (F,); ``labels`` (N,) int64 or None (-1 =
    unlabeled); ``label_names`` list[str] or None; ``names`` file names relative to the
    folder, or None; ``source`` a description; ``skipped`` unreadable files left out.
    """

    def __init__(self, *, shape, labels, label_names, names, source, skipped=None):
        self.shape: tuple[int, ...] = tuple(int(s) for s in shape)
        self.labels: np.ndarray | None = labels
        self.label_names: list[str] | None = label_names
        self.names: list[str] | None = names
        self.source: str = source
        self.skipped: list[str] = list(skipped or [])

    @property
    def flat(self) -> bool:
        """True for flat vectors: items are (F,) instead of (C, H, W)."""
        return len(self.shape) == 1

    def _label(self, i: int) -> int:
        return -1 if self.labels is None else int(self.labels[i])

    @staticmethod
    def _check_batch_size(batch_size) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise DiscretaeError(f"batch_size={batch_size!r}; expected an int >= 1")

    def _index(self, i) -> int:
        n, i = len(self), operator.index(i)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {n} images")
        return i % n

    def batches(
        self,
        batch_size: int = 256,
        *,
        num_workers: int | None = None,
        shuffle: bool = False,
        seed: int | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (x (B, *shape) float32, labels (B,) int64) over the whole collection."""
        raise NotImplementedError

    def subset(self, start: int, stop: int) -> ImageDataset:
        """Items [start, stop) as a dataset of the same kind (a shard of the collection)."""
        import copy

        part = copy.copy(self)
        self._slice_items(part, start, stop)
        if self.labels is not None:
            part.labels = self.labels[start:stop]
        part.skipped = list(self.skipped)  # the copy's pass appends its own failures
        return part

    def _slice_items(self, part: ImageDataset, start: int, stop: int) -> None:
        raise DiscretaeError(f"cannot shard a {type(self).__name__}")

    def to_array(self) -> np.ndarray:
        """All items as one (N, *shape) float32 array (a folder is decoded in full)."""
        parts = [x.numpy() for x, _ in self.batches(1024)]
        return np.concatenate(parts) if parts else np.zeros((0, *self.shape), np.float32)

    def __repr__(self) -> str:
        lab = "unlabeled" if self.labels is None else "labeled"
        return f"{type(self).__name__}({self.source!r}, n={len(self)}, shape={self.shape}, {lab})"


class ArrayDataset(ImageDataset):
    """Images held in an array (possibly memory-mapped), converted one block at a time."""

    def __init__(
        self,
        raw: np.ndarray,
        what: str,
        *,
        image_size,
        channels,
        labels=None,
        label_names=None,
        source=None,
        gray_from_color=True,
    ):
        layout, item = image_layout(tuple(raw.shape), what)
        self._raw, self._layout, self._scale = raw, layout, unit_scale(raw, what)
        if layout == "flat":
            if image_size is not None or channels is not None:
                raise DiscretaeError(
                    f"{what} holds flat vectors of {item[0]} features; "
                    "image_size and channels apply to images only"
                )
            shape = item
        else:
            c = channels if channels is not None else item[0]
            if c not in (1, 3) and c != item[0]:
                raise DiscretaeError(f"channels={c} cannot be made from {item[0]}-channel data")
            if c == 1 and item[0] != 1 and not gray_from_color:
                raise ColorImageError(what, f"{item[0]} channels")
            shape = (c, *(image_size or item[1:]))
        super().__init__(
            shape=shape, labels=labels, label_names=label_names, names=None, source=source or what
        )

    def __len__(self) -> int:
        return self._raw.shape[0]

    def _slice_items(self, part: ImageDataset, start: int, stop: int) -> None:
        part._raw = self._raw[start:stop]

    def _convert(self, block: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.asarray(block, dtype=np.float32) * np.float32(self._scale))
        if self._layout == "flat":
            return x
        if self._layout == "nhw":
            x = x.unsqueeze(1)
        elif self._layout == "nhwc":
            x = x.permute(0, 3, 1, 2)
        x = _to_channels(x, self.shape[0])
        if tuple(x.shape[2:]) != self.shape[1:]:
            x = F.interpolate(
                x, size=self.shape[1:], mode="bilinear", antialias=True, align_corners=False
            ).clamp_(0.0, 1.0)
        return x.contiguous()

    def __getitem__(self, i) -> tuple[torch.Tensor, int]:
        i = self._index(i)
        return self._convert(self._raw[i : i + 1])[0], self._label(i)

    def batches(self, batch_size=256, *, num_workers=None, shuffle=False, seed=None):
        """Plain slicing; ``num_workers`` is ignored for arrays."""
        self._check_batch_size(batch_size)
        n = len(self)
        order = np.random.default_rng(seed).permutation(n) if shuffle else None
        for s in range(0, n, batch_size):
            rows = slice(s, s + batch_size) if order is None else order[s : s + batch_size]
            x = self._convert(self._raw[rows])
            if self.labels is None:
                y = torch.full((x.shape[0],), -1, dtype=torch.int64)
            else:
                y = torch.from_numpy(np.ascontiguousarray(self.labels[rows]))
            yield x, y


class _Decoder(Dataset):
    """What DataLoader workers run: decodes a batch of files into one array.

    ``__getitems__(indices)`` returns ``(x, labels, failed, refused)``: x (B, C, H, W)
    uint8, or float32 in [0, 1] when a 16-bit image is among them, None when none
    decoded; labels (B,) int64; failed, (index, reason) of files that did not decode;
    refused, ``ColorImageError``'s (what, detail) for a color image where gray ones are
    required, else None. Arrays, not tensors, cross the process boundary: uint8 is a
    quarter of float32, and torch would move each tensor through a new shared-memory
    segment.
    """

    def __init__(self, root, names, labels, size, channels, gray_from_color):
        self.root, self.names, self.labels = os.fspath(root), names, labels
        self.size, self.channels, self.gray_from_color = size, channels, gray_from_color

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i):
        return self.__getitems__([i])

    def __getitems__(self, indices):
        arrays, kept, failed = [], [], []
        size, channels, gray_from_color = self.size, self.channels, self.gray_from_color
        for i in indices:
            path = os.path.join(self.root, self.names[i])
            try:
                a = read_image(path, size, channels, gray_from_color=gray_from_color)
            except ColorImageError as e:  # not a bad file: the whole pass must stop
                return None, np.zeros(0, np.int64), failed, (e.what, e.detail)
            except Exception as e:  # any decode failure is one bad file, not a crashed run
                failed.append((i, f"cannot decode: {e}"))
                continue
            arrays.append(a)
            kept.append(i)
        if not arrays:
            x = None
        elif all(a.dtype == np.uint8 for a in arrays):
            x = np.stack(arrays)
        else:
            x = np.stack([unit_float(a) for a in arrays])
        y = np.full(len(kept), -1, np.int64) if self.labels is None else self.labels[kept]
        return x, y, failed, None


def _as_float(x: np.ndarray) -> torch.Tensor:
    """A decoded batch as float32 in [0, 1]: uint8 divided by 255, as ``unit_float``."""
    t = torch.from_numpy(x)
    return t.float().div_(255.0) if t.dtype == torch.uint8 else t


def _one_batch(batch):
    return batch  # __getitems__ already made the batch


class FolderDataset(ImageDataset):
    """Image files decoded on demand; ``batches`` streams them through DataLoader workers."""

    def __init__(
        self,
        root: Path,
        names,
        *,
        size,
        channels,
        labels,
        label_names,
        skipped,
        strict,
        warn,
        gray_from_color=True,
    ):
        super().__init__(
            shape=(channels, *size),
            labels=labels,
            label_names=label_names,
            names=names,
            source=str(root),
            skipped=skipped,
        )
        self.root, self._strict, self._warn = root, strict, warn
        self._gray_from_color = gray_from_color

    def __len__(self) -> int:
        return len(self.names)

    def _slice_items(self, part: ImageDataset, start: int, stop: int) -> None:
        part.names = self.names[start:stop]

    def _decoder(self) -> _Decoder:
        return _Decoder(
            self.root, self.names, self.labels, self.shape[1:], self.shape[0], self._gray_from_color
        )

    def __getitem__(self, i) -> tuple[torch.Tensor, int]:
        i = self._index(i)
        x, y, failed, refused = self._decoder()[i]
        if refused is not None:
            raise ColorImageError(*refused)
        if failed:
            raise DiscretaeError(f"{self.root / self.names[i]}: {failed[0][1]}")
        return _as_float(x)[0], int(y[0])

    def batches(self, batch_size=256, *, num_workers=None, shuffle=False, seed=None):
        """Decode in ``num_workers`` DataLoader workers (None: automatic), ``batch_size`` at
        a time; undecodable files are left out (or raise when strict)."""
        self._check_batch_size(batch_size)
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        workers = auto_workers(len(self)) if num_workers is None else num_workers
        loader = DataLoader(
            self._decoder(),
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=workers,
            collate_fn=_one_batch,
            generator=gen,
        )
        bad: list[tuple[int, str]] = []
        try:
            for x, y, failed, refused in loader:
                if refused is not None:
                    raise ColorImageError(*refused)
                if failed and self._strict:
                    i, reason = failed[0]
                    raise DiscretaeError(f"{self.root / self.names[i]}: {reason}")
                bad += failed
                if x is not None:
                    yield _as_float(x), torch.from_numpy(y)
        finally:
            if bad:
                self._drop(sorted(bad))

    def _drop(self, bad: list[tuple[int, str]]) -> None:
        gone = {i for i, _ in bad}
        named = [(self.names[i], r) for i, r in bad]
        keep = [i for i in range(len(self.names)) if i not in gone]
        self.names = [self.names[i] for i in keep]
        if self.labels is not None:
            self.labels = self.labels[keep]
        self.skipped += [n for n, _ in named]
        self._warn(_skip_message(str(self.root), named))


# ---------------------------------------------------------------- loaders
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
    root: Path, labels_path, image_size, channels, strict, warn, gray_from_color=True
) -> FolderDataset:
    if channels not in (None, 1, 3):
        raise DiscretaeError(f"channels={channels} is not 1 or 3 for a folder of images")
    # with size and channels fixed (a fitted model's), probing every file up front only
    # repeats what the decoding stream does: it drops bad files with one warning too
    scan = scan_folder(root, probe=image_size is None or channels is None)
    names = scan.names
    if strict and scan.bad:
        i = min(scan.bad)
        raise DiscretaeError(f"{root / names[i]}: {scan.bad[i]}")
    if len(scan.bad) == len(names):
        bad = [(names[i], r) for i, r in scan.bad.items()]
        raise DiscretaeError(f"no readable images in {root}: {_skip_message(str(root), bad)}")
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
        warn(_skip_message(str(root), [(names[i], scan.bad[i]) for i in sorted(scan.bad)]))
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
) -> ImageDataset:
    """Open a folder, ``.npy``, IDX file or folder, or a named dataset (see module docs).

    labels: a ``.npy`` of N integer labels (folder order: sorted relative names, bad files
    included), or for folders a CSV of ``filename,label`` (relative name or unique
    basename; string labels become ``label_names``). It overrides subfolder labels.
    image_size: (H, W) to resize to. channels: 1 or 3. gray_from_color: False refuses,
    with ``ColorImageError``, to turn color images gray when ``channels`` is 1 (an array
    at once, a folder's file when the stream reaches it). strict: raise on the first
    unreadable file instead of skipping it. warn: called with each warning (default:
    ``warnings.warn``).
    """
    warn = warn or _default_warn
    _check_args(image_size, channels)
    size = None if image_size is None else (int(image_size[0]), int(image_size[1]))
    lab = None if labels is None else Path(labels).expanduser()
    if lab is not None and not lab.is_file():
        raise DiscretaeError(f"labels file {str(lab)!r} does not exist")
    kw = {"image_size": size, "channels": channels, "gray_from_color": gray_from_color}
    text = os.fspath(spec)
    path = Path(text).expanduser()
    base, _, split = text.rpartition(":") if ":" in text else (text, "", None)
    if path.is_dir():
        if idx_image_files(path, None):
            ds = _load_idx_folder(path, None, str(path), **kw)
        else:
            return _load_folder(path, lab, size, channels, strict, warn, gray_from_color)
    elif path.is_file():
        if path.suffix.lower() == ".npy":
            ds = ArrayDataset(read_npy(path), str(path), **kw)
        elif looks_like_idx(path):
            ds = _load_idx([path], str(path), **kw)
        else:
            raise DiscretaeError(
                f"{text}: unsupported file; expected a folder of images, a .npy "
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
