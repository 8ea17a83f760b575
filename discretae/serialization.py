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

from .atomic import atomic_path
from .errors import DiscretaeError

FORMAT = "discretae-model"
FORMAT_VERSION = 1


def write_model_file(
    path: str | os.PathLike, tensors: dict[str, torch.Tensor], config: dict
) -> None:
    """Write ``tensors`` (name -> tensor, any device) and a JSON-able ``config`` atomically."""
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "config": json.dumps(config, sort_keys=True),
    }
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(cpu, str(tmp), metadata=metadata)


def read_model_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a model file -> (tensors on CPU, config).

    Raises:
        DiscretaeError: a missing path, a file that is not safetensors or is truncated,
            a safetensors file that is not a discretae model, or one written by a newer
            format version.
    """
    p = Path(path)
    if not p.is_file():
        raise DiscretaeError(f"model file {str(p)!r} does not exist or is not a file")
    try:
        with safe_open(str(p), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != FORMAT:
                raise DiscretaeError(
                    f"{str(p)!r} is a safetensors file but not a discretae model "
                    f"(metadata format is {metadata.get('format')!r}, expected {FORMAT!r})"
                )
            _check_version(p, metadata.get("format_version"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except DiscretaeError:
        raise
    except Exception as e:  # safetensors raises its own error types for bad headers and data
        raise DiscretaeError(
            f"{str(p)!r} is not a readable discretae model file "
            f"(not safetensors, or truncated): {e}"
        ) from None
    try:
        config = json.loads(metadata["config"])
    except (KeyError, json.JSONDecodeError) as e:
        raise DiscretaeError(f"{str(p)!r} has a missing or corrupt config: {e}") from None
    if not isinstance(config, dict):
        raise DiscretaeError(f"{str(p)!r} has a config that is not a JSON object")
    return tensors, config


def _check_version(p: Path, version: str | None) -> None:
    try:
        v = int(version)
    except (TypeError, ValueError):
        raise DiscretaeError(f"{str(p)!r} has an unreadable format_version {version!r}") from None
    if v > FORMAT_VERSION:
        raise DiscretaeError(
            f"{str(p)!r} was written by a newer discretae (format_version {v}; this version "
            f"reads up to {FORMAT_VERSION}); upgrade discretae to load it"
        )
    if v < 1:
        raise DiscretaeError(f"{str(p)!r} has an invalid format_version {v}")
