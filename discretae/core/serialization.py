"""Model files: one .safetensors file, tensors plus a JSON config in its metadata.

The metadata holds ``format = "discretae-model"``, ``format_version`` and ``config``
(JSON). Reading goes through safetensors only, so loading never unpickles anything.
Files are written to a temporary name and renamed into place.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from discretae.core.errors import DiscretaeError
from discretae.core.files import atomic_path

FORMAT = "discretae-model"
FORMAT_VERSION = 1


def write_tagged_file(
    path: str | os.PathLike,
    tensors: dict[str, torch.Tensor],
    config: dict,
    *,
    fmt: str,
    version: int,
    fsync: bool = False,
) -> None:
    """Write ``tensors`` and a JSON-able ``config`` atomically, tagged with ``fmt`` and
    ``version`` in the safetensors metadata. ``fsync`` puts the data on disk before the
    rename, so a power cut keeps either the old file or the new one."""
    metadata = {
        "format": fmt,
        "format_version": str(version),
        "config": json.dumps(config, sort_keys=True),
    }
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(cpu, str(tmp), metadata=metadata)
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())


def read_tagged_file(
    path: str | os.PathLike, *, fmt: str, version: int, what: str, hint: str = ""
) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a file written by :func:`write_tagged_file` -> (tensors on CPU, config).

    ``what`` names the kind of file in messages ("model", "checkpoint"); ``hint`` is
    appended to the message for a safetensors file of another format.

    Raises:
        DiscretaeError: a missing path, a file that is not safetensors or is truncated,
            a safetensors file of another format, one written by a newer format version,
            or a missing or corrupt config.
    """
    p = Path(path)
    if not p.is_file():
        raise DiscretaeError(f"{what} file {str(p)!r} does not exist or is not a file")
    try:
        with safe_open(str(p), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != fmt:
                raise DiscretaeError(
                    f"{str(p)!r} is a safetensors file but not a discretae {what} "
                    f"(metadata format is {metadata.get('format')!r}, expected {fmt!r}){hint}"
                )
            _check_version(p, metadata.get("format_version"), version)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except DiscretaeError:
        raise
    except Exception as e:  # safetensors raises its own error types for bad headers and data
        raise DiscretaeError(
            f"{str(p)!r} is not a readable discretae {what} file "
            f"(not safetensors, or truncated): {e}"
        ) from None
    try:
        config = json.loads(metadata["config"])
    except (KeyError, json.JSONDecodeError) as e:
        raise DiscretaeError(f"{str(p)!r} has a missing or corrupt config: {e}") from None
    if not isinstance(config, dict):
        raise DiscretaeError(f"{str(p)!r} has a config that is not a JSON object")
    return tensors, config


def write_model_file(
    path: str | os.PathLike, tensors: dict[str, torch.Tensor], config: dict
) -> None:
    """Write ``tensors`` (name -> tensor, any device) and a JSON-able ``config`` atomically."""
    write_tagged_file(path, tensors, config, fmt=FORMAT, version=FORMAT_VERSION)


def read_model_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a model file -> (tensors on CPU, config); see :func:`read_tagged_file`."""
    return read_tagged_file(path, fmt=FORMAT, version=FORMAT_VERSION, what="model")


def _check_version(p: Path, version: str | None, newest: int) -> None:
    try:
        v = int(version)
    except (TypeError, ValueError):
        raise DiscretaeError(f"{str(p)!r} has an unreadable format_version {version!r}") from None
    if v > newest:
        raise DiscretaeError(
            f"{str(p)!r} was written by a newer discretae (format_version {v}; this version "
            f"reads up to {newest}); upgrade discretae to load it"
        )
    if v < 1:
        raise DiscretaeError(f"{str(p)!r} has an invalid format_version {v}")
