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


# how the encoder and decoder networks train: "auto", or a dtype's name
PRECISIONS = ("auto", "float32", "bfloat16")


def native_bf16_cpu() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX), where
    oneDNN's bfloat16 convolutions run about twice as fast as float32 ones."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def training_dtype(
    precision: str, device: torch.device | str, recipe: bool = True
) -> torch.dtype | None:
    """The dtype the networks train in under autocast for ``precision`` on ``device``,
    or None for float32. "auto": bfloat16 for the clustering recipe (``recipe``) on a CPU
    with native bfloat16 (``benchmarks/fit_step.py``: a recipe step on 32x32 colour takes
    half the time; seed agreement and Fashion-MNIST scores measured in
    ``benchmarks/results/clustering-*``), float32 elsewhere: other models, whose
    reconstructions are the product, and CUDA, not measured yet."""
    if precision not in PRECISIONS:
        raise DiscretaeError(f"precision={precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        cpu = torch.device(device).type == "cpu"
        return torch.bfloat16 if recipe and cpu and native_bf16_cpu() else None
    return torch.bfloat16 if precision == "bfloat16" else None
