"""The one check of a device name a user gives (``--device``), before any data is read."""

from __future__ import annotations

import re

import torch

from discretae.core.errors import DiscretaeError


def check_device(device: str) -> str:
    """Validate ``auto``, ``cpu``, ``cuda`` or ``cuda:N``: the name must be one of these,
    CUDA must be there for a cuda one, and device N must exist. Returns ``device``."""
    if device in ("auto", "cpu"):
        return device
    m = re.fullmatch(r"cuda(?::(\d+))?", device)
    if m is None:
        raise DiscretaeError(f"device {device!r} is not one of auto, cpu, cuda, cuda:N")
    if not torch.cuda.is_available():
        raise DiscretaeError(
            f"device {device!r} was asked for but CUDA is not available here; use --device cpu"
        )
    if m.group(1) is not None and int(m.group(1)) >= torch.cuda.device_count():
        raise DiscretaeError(
            f"device {device!r} does not exist: {torch.cuda.device_count()} CUDA device(s) found"
        )
    return device
