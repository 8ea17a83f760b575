"""``discretae encode``: DATA -> a .npy of codes or cluster ids, streamed through a memory
map so memory does not grow with the collection; ``--shard i/n`` encodes one slice."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from discretae.commands.common import (
    Callback,
    Warn,
    load_model,
    load_model_data,
    model_batches,
)
from discretae.commands.shards import (
    file_sha256,
    parse_shard,
    shard_range,
    shard_sidecar,
    write_sidecar,
)
from discretae.core.arrays import NpyRowWriter, smallest_int_dtype
from discretae.core.errors import DiscretaeError
from discretae.core.files import atomic_path, check_output, write_text_atomic
from discretae.quantizers.base import alphabet_size


def encode(
    data: str,
    *,
    model: str | os.PathLike,
    out: str | os.PathLike,
    clusters: bool = False,
    with_names: str | os.PathLike | None = None,
    batch_size: int = 256,
    device: str = "auto",
    strict: bool = False,
    shard: str | tuple[int, int] | None = None,
    workers: int | None = None,
    callback: Callback = None,
    warn: Warn = None,
) -> dict:
    """Encode DATA with a fitted model and save the codes (or cluster ids) as .npy.

    Codes are stored in the smallest integer dtype that holds the model's code range:
    (N,) for a global one-hot code, (N, B) for a binary code, (N, h, w[, B]) for a grid.
    With ``clusters=True`` the output is one cluster id per image, (N,).
    ``with_names`` writes one line per image: its file name, or its row number when DATA
    has no file names (arrays, IDX files, digits).

    Images are resized to the model's size; for an RGB model gray images are repeated
    into RGB, and for a gray model a color image raises DiscretaeError naming it.

    DATA streams through a DataLoader with ``workers`` decoding processes (None:
    automatic) and the codes go straight into the output .npy through a memory map, so
    memory does not grow with the collection. A folder is listed, not probed, first:
    files that fail to decode are found by the stream (skipped with one warning, or
    raised with ``strict``). ``shard=(i, n)`` or ``"i/n"`` encodes
    only the i-th of n contiguous slices of DATA (sorted file order) and writes a
    sidecar (:func:`~discretae.commands.shards.shard_sidecar`) with its rows and names,
    for :func:`~discretae.commands.merge.merge`.
    """
    ij = _check_encode_args(out, with_names, shard, workers)
    began = time.perf_counter()
    est = load_model(model, device, inference_only=True)
    ds = load_model_data(data, est, strict=strict, warn=warn)
    total = len(ds)
    loaded = time.perf_counter()
    start, stop = shard_range(*ij, total) if ij is not None else (0, total)
    part = ds.subset(start, stop) if ij is not None else ds
    dtype, row_shape = _row_layout(est, clusters)
    rows = _encode_into(out, part, est, dtype, row_shape, clusters, batch_size, workers, callback)
    streamed = time.perf_counter()
    # after the pass: names of files that failed to decode are gone, rows line up
    names = part.names if part.names is not None else [str(i) for i in range(start, stop)]
    if with_names is not None:
        write_text_atomic(with_names, "".join(f"{name}\n" for name in names))
    result = {
        "out": str(out),
        "kind": "clusters" if clusters else "codes",
        "shape": [rows, *row_shape],
        "dtype": str(dtype),
        "n_images": int(rows),
        "skipped": len(getattr(part, "skipped", []) or []),
        "names": str(with_names) if with_names is not None else None,
        "shard": None,
        "load_seconds": loaded - began,  # the model, and listing DATA
        "encode_seconds": streamed - loaded,  # decoding, encoding and writing
    }
    if ij is not None:
        sidecar = _write_shard_sidecar(out, ij, (start, stop, total), result, data, model, names)
        result.update(sidecar=str(sidecar))
        result["shard"] = {"index": ij[0], "count": ij[1], "start": start, "stop": stop}
    return result


def _row_layout(est, clusters: bool) -> tuple[np.dtype, tuple[int, ...]]:
    """The output's dtype, the smallest that holds the code range (or cluster ids), and
    the shape of one row: () for cluster ids, else the model's code shape."""
    top = (int(est.n_clusters_) if clusters else alphabet_size(est.model, est.n_codes)) - 1
    return smallest_int_dtype(max(top, 0)), () if clusters else tuple(est.code_shape_)


def _write_shard_sidecar(out, ij, span, result: dict, data, model, names) -> Path:
    """The sidecar of shard ``ij`` = (i, n), rows ``span`` = (start, stop, total)."""
    start, stop, total = span
    info = {
        "shard": list(ij),
        "start": start,
        "stop": stop,
        "total": total,
        "rows": result["n_images"],
        "kind": result["kind"],
        "dtype": result["dtype"],
        "row_shape": result["shape"][1:],
        "data": str(data),
        "model_sha256": file_sha256(model),
        "names": list(names),
    }
    return write_sidecar(out, info)


def _check_encode_args(out, with_names, shard, workers) -> tuple[int, int] | None:
    """Check the outputs and options before any work; returns the shard (i, n) or None."""
    check_output(out)
    if with_names is not None:
        check_output(with_names)
    ij = parse_shard(shard) if isinstance(shard, str) or shard is None else tuple(shard)
    if ij is not None:
        parse_shard(f"{ij[0]}/{ij[1]}")
        check_output(shard_sidecar(out))
    if workers is not None and workers < 0:
        raise DiscretaeError(f"workers must be >= 0, got {workers}")
    return ij


def _encode_into(out, part, est, dtype, row_shape, clusters, batch_size, workers, callback) -> int:
    """Stream ``part`` through the model into the .npy ``out``; returns the rows written."""
    with atomic_path(out) as tmp, _threads_beside_workers(part, est, workers):
        writer = NpyRowWriter(tmp, dtype, (len(part), *row_shape))
        batches = model_batches(
            part, batch_size, stage="encode", callback=callback, workers=workers
        )
        for images, _ in batches:
            codes = est.encode_batch(images.to(est.device_))
            rows = est.cluster_ids(codes) if clusters else codes.cpu().numpy()
            writer.write(rows.astype(dtype, copy=False))
        writer.finish()
    return writer.done


@contextlib.contextmanager
def _threads_beside_workers(part, est, workers: int | None) -> Iterator[None]:
    """On the CPU, leave the cores the decoding workers take to them, then restore torch's
    thread count."""
    threads = torch.get_num_threads()
    if est.device_.type == "cpu":
        # Decoding workers and the model share the cores; oversubscribed, torch's threads
        # spin-wait: 20k PNGs took 24 s with 2 threads beside 1 worker, 5 s with 1 thread.
        from discretae.data import FolderDataset, auto_workers  # what batches() picks

        busy = 0  # arrays are sliced in this process
        if isinstance(part, FolderDataset):
            busy = workers if workers is not None else auto_workers(len(part))
        torch.set_num_threads(max(1, min(threads, _cpu_count() - busy)))
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
