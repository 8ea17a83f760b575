"""Image collections that stream batches: ``ImageDataset`` and its array and folder kinds.

Every item is a float32 tensor in [0, 1], (C, H, W) for images or (F,) for flat vectors
(``shape`` says which), and an int label, -1 when unlabeled. ``load_dataset`` (in
:mod:`discretae.data.loading`) picks the kind and the reader for a path or a name.

A folder's file that fails to decode in a DataLoader worker comes back as a marker, is
left out of the batch, and is reported in one warning at the end of that pass, after
which it is removed from ``names``, ``labels`` and ``len``. So after a complete pass the
rows yielded always line up with ``names``.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from discretae.core.errors import DiscretaeError
from discretae.data.framing import LEGACY_FRAMING, Framing, frame_tensor
from discretae.data.readers import (
    ColorImageError,
    bad_file_reason,
    image_layout,
    read_image,
    unit_float,
    unit_scale,
)

_SHOW = 5  # bad files named in a warning


def skip_message(where: str, bad: list[tuple[str, str]]) -> str:
    """One warning line for unreadable files: their count and the first few, with why."""
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

    def at_size(self, size: tuple[int, int]) -> ImageDataset:
        """The same images brought to ``size`` (H, W) as they are read (a shallow copy)."""
        import copy

        if self.flat:
            raise DiscretaeError("flat vectors have no image size")
        part = copy.copy(self)
        part.shape = (self.shape[0], int(size[0]), int(size[1]))
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
        framing: Framing = LEGACY_FRAMING,
    ):
        layout, item = image_layout(tuple(raw.shape), what)
        self._framing = framing
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
            x = frame_tensor(x, self.shape[1:], self._framing).clamp_(0.0, 1.0)
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

    def __init__(self, root, names, labels, size, channels, gray_from_color, framing):
        self.root, self.names, self.labels = os.fspath(root), names, labels
        self.size, self.channels, self.gray_from_color = size, channels, gray_from_color
        self.framing = framing

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
                a = read_image(
                    path, size, channels, gray_from_color=gray_from_color, framing=self.framing
                )
            except ColorImageError as e:  # not a bad file: the whole pass must stop
                return None, np.zeros(0, np.int64), failed, (e.what, e.detail)
            except Exception as e:  # any decode failure is one bad file, not a crashed run
                failed.append((i, bad_file_reason(e)))
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
        framing: Framing = LEGACY_FRAMING,
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
        self.framing = framing

    def __len__(self) -> int:
        return len(self.names)

    def _slice_items(self, part: ImageDataset, start: int, stop: int) -> None:
        part.names = self.names[start:stop]

    def _decoder(self) -> _Decoder:
        return _Decoder(
            self.root,
            self.names,
            self.labels,
            self.shape[1:],
            self.shape[0],
            self._gray_from_color,
            self.framing,
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
        self._warn(skip_message(str(self.root), named))


def __getattr__(name: str):
    # load_dataset moved to loading.py; this keeps `from discretae.data.datasets import
    # load_dataset` working without a circular import at load time
    if name == "load_dataset":
        from discretae.data.loading import load_dataset

        return load_dataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
