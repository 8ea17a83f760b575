"""``.npy`` files: read without unpickling, write atomically, fill row block by row block."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from discretae.core.errors import DiscretaeError
from discretae.core.files import atomic_path

COPY_ROWS = 1 << 16  # rows per chunk when a .npy is copied or merged


def smallest_int_dtype(max_value: int) -> np.dtype:
    """The smallest of uint8, uint16, int32, int64 that holds ``0..max_value``."""
    for dtype in (np.uint8, np.uint16, np.int32):
        if max_value <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.int64)


def read_npy(path: str | os.PathLike) -> np.ndarray:
    """Memory-map a ``.npy`` file without unpickling anything."""
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as e:
        if "allow_pickle" in str(e) or "Python objects" in str(e):
            raise DiscretaeError(
                f"{path}: holds Python objects (dtype object); expected a numeric array"
            ) from None
        raise DiscretaeError(f"{path}: not a valid .npy file ({e})") from None
    except (OSError, EOFError) as e:
        raise DiscretaeError(f"{path}: cannot read as .npy ({e})") from None
    if not isinstance(arr, np.ndarray):  # np.load gives an NpzFile for .npz archives
        raise DiscretaeError(f"{path}: is a .npz archive; expected a single .npy array")
    return arr


def load_npy(path: str | os.PathLike, what: str) -> np.ndarray:
    """Read a .npy array (never unpickles); a missing or foreign file is a user error.
    ``what`` names the file in messages, e.g. "codes"."""
    p = Path(path)
    if not p.is_file():
        state = "is a folder" if p.is_dir() else "does not exist"
        raise DiscretaeError(f"{what} file {str(p)!r} {state}; expected a .npy file")
    return np.asarray(read_npy(p))


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """``np.save`` through a temporary file (np.save would append .npy to a bare name)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array, allow_pickle=False)


class NpyRowWriter:
    """Fills a .npy of known shape row block by row block through short-lived memory
    maps, so resident memory stays bounded however many rows the file gets."""

    def __init__(self, path: str | os.PathLike, dtype: np.dtype, shape: tuple[int, ...]) -> None:
        self.path, self.dtype, self.shape = Path(path), np.dtype(dtype), tuple(shape)
        self.row_bytes = self.dtype.itemsize * int(np.prod(shape[1:], dtype=np.int64))
        self.done = 0
        if shape[0] == 0 or self.row_bytes == 0:  # nothing to map: header only
            with open(self.path, "wb") as f:
                np.lib.format.write_array(f, np.zeros(shape, self.dtype), allow_pickle=False)
            self.offset = None
            return
        mm = np.lib.format.open_memmap(self.path, mode="w+", dtype=self.dtype, shape=self.shape)
        self.offset = mm.offset
        del mm

    def write(self, rows: np.ndarray) -> None:
        """Append rows (k, *shape[1:])."""
        k = len(rows)
        if k == 0:
            return
        if self.done + k > self.shape[0]:
            raise DiscretaeError(f"{self.path}: {self.done + k} rows for a file of {self.shape[0]}")
        view = np.memmap(
            self.path,
            dtype=self.dtype,
            mode="r+",
            offset=self.offset + self.done * self.row_bytes,
            shape=(k, *self.shape[1:]),
        )
        view[:] = rows
        del view  # unmapped: the pages belong to the page cache, not to this process
        self.done += k

    def finish(self) -> None:
        """Shrink the file to the rows written (fewer when files failed to decode)."""
        if self.done == self.shape[0]:
            return
        short = self.path.with_name(self.path.name + ".short")
        part = NpyRowWriter(short, self.dtype, (self.done, *self.shape[1:]))
        src = np.load(self.path, mmap_mode="r")
        for a in range(0, self.done, COPY_ROWS):
            part.write(src[a : min(a + COPY_ROWS, self.done)])
        del src
        os.replace(short, self.path)
