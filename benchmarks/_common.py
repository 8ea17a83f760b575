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


def write_report(report: dict, folder, stem: str) -> Path:
    """Write ``report`` as ``folder/STEM-<device slug>-<date>.json``; -> its path."""
    import json
    import re

    from discretae.core.files import write_text_atomic

    slug = re.sub(r"[^a-z0-9]+", "-", str(report["device"]).lower()).strip("-")[:40]
    path = Path(folder) / f"{stem}-{slug}-{report['date'][:10]}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(report, indent=1) + "\n")
    print(f"wrote {path}")
    return path
