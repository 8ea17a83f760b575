"""Atomic output: write to a temporary file beside the target, then rename it into place.

An interrupted run (Ctrl-C, a crash, a full disk) never leaves a half-written file
under the final name.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from discretae.core.errors import DiscretaeError


def check_writable(path: str | os.PathLike) -> Path:
    """Fail early, with one clear line, when ``path`` cannot be written."""
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if p.is_dir():
        raise DiscretaeError(f"output path {str(p)!r} is a directory, expected a file name")
    if not parent.exists():
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DiscretaeError(f"cannot create folder {str(parent)!r}: {e.strerror}") from None
    if not os.access(parent, os.W_OK):
        raise DiscretaeError(f"cannot write to {str(parent)!r}: permission denied")
    return p


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``path`` on success.

    Usage::

        with atomic_path("codes.npy") as tmp:
            np.save(tmp, codes)
    """
    target = check_writable(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes the file owner-only; give it the mode a plain open() would have
        umask = os.umask(0)
        os.umask(umask)
        if tmp_path.exists():
            os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
