"""Output files and folders: check them before long work, write them atomically.

Every output goes to a temporary name beside the target and is renamed into place, so an
interrupted run (Ctrl-C, a crash, a full disk) never leaves a half-written file or folder
under the final name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from discretae.core.errors import DiscretaeError


def check_writable(path: str | os.PathLike) -> Path:
    """Fail early, with one clear line, when ``path`` cannot be written: it is a folder, or
    its folder cannot be created or is not writable by the permission bits."""
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


def _probe(folder: Path, target: Path) -> None:
    """Create and remove a scratch file in ``folder``: root passes permission bits, and a
    read-only mount passes ``os.access``, so only a real write tells."""
    try:
        fd, scratch = tempfile.mkstemp(prefix=".discretae-probe.", dir=folder)
    except OSError as e:
        raise DiscretaeError(f"cannot write {str(target)!r}: {e.strerror or e}") from None
    os.close(fd)
    os.unlink(scratch)


def _parent(p: Path) -> Path:
    return p.parent if str(p.parent) else Path(".")


def check_output(path: str | os.PathLike) -> Path:
    """Fail now, not after a long fit, when the file ``path`` cannot be written.

    Beyond :func:`check_writable` it creates and removes a scratch file beside the target.
    """
    p = check_writable(path)
    _probe(_parent(p), p)
    return p


def check_output_folder(path: str | os.PathLike) -> Path:
    """Fail early when ``path`` cannot become a new folder of outputs: it must be absent
    or an empty folder (it is replaced whole, see :func:`atomic_folder`), in a folder
    that takes a real write."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise DiscretaeError(f"output {str(p)!r} exists and is not a folder")
    if p.is_dir():
        if any(p.iterdir()):
            raise DiscretaeError(
                f"output folder {str(p)!r} is not empty; remove it or pick another"
            )
        _probe(_parent(p), p)
    else:
        check_output(p)
    return p


def check_writable_folder(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Fail early when files cannot be written into the folder ``path`` (which may exist
    and hold files; it is created later if absent). ``what`` names it in the message."""
    p = Path(path)
    if p.exists():
        if not p.is_dir():
            raise DiscretaeError(f"{what} {str(p)!r} exists and is not a folder")
        _probe(p, p)
    else:
        check_output(p)  # parent creatable and writable; the folder comes later
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


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``path`` to fill; rename it onto ``path`` (absent or
    an empty folder, see :func:`check_output_folder`) on success, remove it on failure."""
    out = Path(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=_parent(out)))
    try:
        yield tmp
        if out.is_dir():
            out.rmdir()  # empty (checked); os.replace cannot overwrite a folder
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 text atomically. File names that are not UTF-8 (kept by Python as
    surrogate escapes) are written back as the bytes they were on disk."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8", errors="surrogateescape")
