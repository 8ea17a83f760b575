"""The shard protocol between ``encode --shard i/n`` and ``merge``: which rows a shard
holds, and the JSON sidecar beside its .npy that lets merge check the shards tile one
collection encoded by one model."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from discretae.core.arrays import read_npy
from discretae.core.errors import DiscretaeError
from discretae.core.files import write_text_atomic

SHARD_FORMAT = "discretae-shard"
_SIDECAR_KEYS = ("start", "stop", "total", "rows", "kind", "dtype", "row_shape", "names")


def parse_shard(shard: str | None) -> tuple[int, int] | None:
    """``"i/n"`` -> ``(i, n)`` with 0 <= i < n; ``None`` stays ``None``."""
    if shard is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", shard)
    if m is None or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
        raise DiscretaeError(
            f"--shard {shard!r} should be i/n with 0 <= i < n (shards count from 0), e.g. 0/4"
        )
    return int(m.group(1)), int(m.group(2))


def shard_range(i: int, n: int, total: int) -> tuple[int, int]:
    """Rows [start, stop) of shard i of n over ``total`` rows: contiguous, sizes within 1."""
    return i * total // n, (i + 1) * total // n


def shard_sidecar(out: str | os.PathLike) -> Path:
    """The JSON beside a shard's codes: ``codes-0.npy`` -> ``codes-0.shard.json``."""
    p = Path(out)
    return p.with_name(f"{p.stem}.shard.json")


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_sidecar(out: str | os.PathLike, info: dict) -> Path:
    """Write a shard's sidecar beside ``out``: ``info`` holds shard, start, stop, total,
    rows, kind, dtype, row_shape, data, model_sha256 and names."""
    path = shard_sidecar(out)
    write_text_atomic(path, json.dumps({"format": SHARD_FORMAT, "format_version": 1, **info}))
    return path


def read_shard(path: str | os.PathLike) -> dict:
    """A shard's sidecar, checked against its .npy, with ``path`` and ``array`` (mapped)."""
    p, side = Path(path), shard_sidecar(path)
    if not p.is_file():
        raise DiscretaeError(f"shard {str(p)!r} does not exist")
    if not side.is_file():
        raise DiscretaeError(
            f"shard {str(p)!r} has no sidecar {str(side)!r}; merge takes the .npy files "
            "written by `discretae encode --shard i/n`, each with its .shard.json"
        )
    try:
        info = json.loads(side.read_text())
        ok = info.get("format") == SHARD_FORMAT and int(info["format_version"]) == 1
        ok = ok and all(k in info for k in _SIDECAR_KEYS)
    except (OSError, ValueError, TypeError, AttributeError, KeyError) as e:
        raise DiscretaeError(f"cannot read shard sidecar {str(side)!r}: {e}") from None
    if not ok:
        raise DiscretaeError(f"{str(side)!r} is not a discretae shard sidecar")
    arr = read_npy(p)
    expected = (info["rows"], *info["row_shape"])
    if tuple(arr.shape) != expected or str(arr.dtype) != info["dtype"]:
        raise DiscretaeError(
            f"shard {str(p)!r} holds {arr.dtype} {tuple(arr.shape)} but its sidecar says "
            f"{info['dtype']} {expected}"
        )
    if len(info["names"]) != info["rows"]:
        raise DiscretaeError(f"{str(side)!r} names {len(info['names'])} rows of {info['rows']}")
    return {**info, "path": str(p), "array": arr}


def check_cover(shards: list[dict]) -> None:
    """The shards (from :func:`read_shard`) must come from one run's settings and tile
    [0, total) exactly."""
    first = shards[0]
    for key, what in (
        ("total", "the collection size"),
        ("kind", "what they hold (codes or clusters)"),
        ("dtype", "the dtype"),
        ("row_shape", "the code shape"),
        ("model_sha256", "the model file"),
    ):
        for other in shards[1:]:
            if other.get(key) != first.get(key):
                raise DiscretaeError(
                    f"shards {first['path']!r} and {other['path']!r} differ in {what} "
                    f"({first.get(key)!r} vs {other.get(key)!r}); they cannot be merged"
                )
    at, total = 0, first["total"]
    for s in sorted(shards, key=lambda s: (s["start"], s["stop"])):
        if s["start"] > at:
            raise DiscretaeError(
                f"rows {at}-{s['start'] - 1} of {total} are missing: no shard given covers "
                f"them (the next, {s['path']!r}, starts at {s['start']})"
            )
        if s["start"] < at:
            raise DiscretaeError(
                f"shard {s['path']!r} (rows {s['start']}-{s['stop'] - 1}) overlaps rows "
                "already covered by another shard; give each shard once"
            )
        at = s["stop"]
    if at != total:
        raise DiscretaeError(f"rows {at}-{total - 1} of {total} are missing: no shard covers them")
