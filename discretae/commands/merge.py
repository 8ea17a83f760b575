"""``discretae merge``: the shards of ``encode --shard i/n`` -> one .npy in the original order."""

from __future__ import annotations

import os

import numpy as np

from discretae.commands.common import Callback
from discretae.commands.shards import check_cover, read_shard
from discretae.core.arrays import COPY_ROWS, NpyRowWriter
from discretae.core.errors import DiscretaeError
from discretae.core.files import atomic_path, check_output, write_text_atomic


def merge(
    shards: list[str | os.PathLike],
    *,
    out: str | os.PathLike,
    with_names: str | os.PathLike | None = None,
    callback: Callback = None,
) -> dict:
    """Merge the outputs of ``encode --shard i/n`` into one .npy, in the original order.

    The shards (any order) must hold the same kind of output from the same model and
    together cover every row of the same collection exactly once; anything else raises
    DiscretaeError saying which rows are missing or doubled. Rows are copied in chunks,
    so memory stays bounded. ``with_names`` gets the merged names, one per line.
    """
    if not shards:
        raise DiscretaeError("merge needs at least one shard file")
    check_output(out)
    if with_names is not None:
        check_output(with_names)
    infos = sorted((read_shard(p) for p in shards), key=lambda s: s["start"])
    check_cover(infos)
    rows = sum(s["rows"] for s in infos)
    dtype, row_shape = np.dtype(infos[0]["dtype"]), tuple(infos[0]["row_shape"])
    with atomic_path(out) as tmp:
        writer = NpyRowWriter(tmp, dtype, (rows, *row_shape))
        for s in infos:
            for a in range(0, s["rows"], COPY_ROWS):
                writer.write(np.asarray(s["array"][a : a + COPY_ROWS]))
                if callback is not None:
                    callback({"stage": "merge", "done": writer.done, "total": rows})
    if with_names is not None:
        write_text_atomic(with_names, "".join(f"{name}\n" for s in infos for name in s["names"]))
    return {
        "out": str(out),
        "kind": infos[0]["kind"],
        "shape": [rows, *row_shape],
        "dtype": str(dtype),
        "n_images": rows,
        "total": infos[0]["total"],
        "shards": [s["path"] for s in infos],
        "names": str(with_names) if with_names is not None else None,
    }
