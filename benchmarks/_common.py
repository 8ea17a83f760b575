"""What every benchmark records beside its figures: the device and library versions."""

from __future__ import annotations

import platform
import re
from importlib import metadata
from pathlib import Path


def device_name(device: str = "cpu") -> str:
    """The GPU's name for a CUDA device, else the CPU model and its logical CPU count."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(torch.device(device))
    try:
        names = re.findall(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        if names:
            return f"{names[0].strip()} ({len(names)} logical CPUs)"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions(*dists: str) -> dict:
    """Python's version and each named distribution's (None where not installed)."""
    out = {"python": platform.python_version()}
    for dist in dists:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def cpu_header(benchmark: str, *dists: str) -> dict:
    """The keys every CPU benchmark's JSON starts with: name, device, date and versions."""
    import datetime as dt

    return {
        "benchmark": benchmark,
        "device": device_name(),
        "device_type": "cpu",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(*dists),
    }
