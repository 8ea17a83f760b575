"""The library functions behind the command line. Each returns a plain dict.

Python users can call them directly::

    from discretae.commands import fit_model, encode_data, evaluate
    fit_model("digits", out="model.safetensors", epochs=5)
    encode_data("digits", model="model.safetensors", out="codes.npy")

They validate input and output paths before any long work, write every output
atomically (temporary name, then rename), and raise :class:`DiscretaeError` with a
one-line message for anything a user can get wrong.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from discretae.core.errors import DiscretaeError
from discretae.core.files import atomic_path, check_writable

Callback = Callable[[dict], None] | None
Warn = Callable[[str], None] | None

_IMAGE_SUFFIXES = {".png"}
# Images kept (as uint8) for the per-cluster montage. Up to this size every image is kept
# (all of Fashion-MNIST fits), so the figure's cluster sizes are exact; beyond it, a
# uniform 1-in-k sample, whose sizes are then those of the sample.
_MONTAGE_BYTES = 64 * 2**20
_RECON_SHOWN = 16
MONTAGE_MAX = (
    400  # rows drawn by `decode --out grid.png`  # originals vs reconstructions shown in the figure
)


# ----------------------------------------------------------------------------- helpers
def check_device(device: str) -> str:
    """Validate ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` before any data is read."""
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


def check_output(path: str | os.PathLike) -> Path:
    """Fail now, not after a long fit, when ``path`` cannot be written.

    Beyond :func:`check_writable` (which trusts permission bits, and root passes those)
    it creates and removes a scratch file beside the target.
    """
    p = check_writable(path)
    _probe(p.parent if str(p.parent) else Path("."), p)
    return p


def _probe(folder: Path, target: Path) -> None:
    try:
        fd, scratch = tempfile.mkstemp(prefix=".discretae-probe.", dir=folder)
    except OSError as e:
        raise DiscretaeError(f"cannot write {str(target)!r}: {e.strerror or e}") from None
    os.close(fd)
    os.unlink(scratch)


def parse_grid(grid: str | None) -> tuple[int, int] | None:
    """``"7x7"`` -> ``(7, 7)``; ``None`` stays ``None``."""
    if grid is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", grid)
    if m is None or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise DiscretaeError(f"grid {grid!r} should look like HxW with positive sizes, e.g. 7x7")
    return int(m.group(1)), int(m.group(2))


def smallest_int_dtype(max_value: int) -> np.dtype:
    """The smallest of uint8, uint16, int32, int64 that holds ``0..max_value``."""
    for dtype in (np.uint8, np.uint16, np.int32):
        if max_value <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.int64)


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """``np.save`` through a temporary file (np.save would append .npy to a bare name)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array, allow_pickle=False)


def load_npy(path: str | os.PathLike, what: str) -> np.ndarray:
    """Read a .npy array (never unpickles); a missing or foreign file is a user error."""
    from discretae.data.readers import read_npy

    p = Path(path)
    if not p.is_file():
        state = "is a folder" if p.is_dir() else "does not exist"
        raise DiscretaeError(f"{what} file {str(p)!r} {state}; expected a .npy file")
    return np.asarray(read_npy(p))


def load_labels(path: str | os.PathLike, n: int) -> np.ndarray:
    """Integer labels (n,) from a .npy file, checked against the number of images."""
    from discretae.data.readers import read_labels_npy

    p = Path(path)
    if not p.is_file():
        raise DiscretaeError(f"labels file {str(p)!r} does not exist")
    labels = read_labels_npy(p)
    if len(labels) != n:
        raise DiscretaeError(f"labels {str(p)!r} have {len(labels)} entries for {n} images")
    return labels


def load_model(path: str | os.PathLike, device: str = "auto", *, inference_only: bool = False):
    """A fitted :class:`DiscreteAutoencoder` from a model file; with ``inference_only`` a
    :class:`~discretae.estimator.fitted.FittedModel`, which encodes and decodes alike without
    importing scikit-learn (for the streaming commands' start-up)."""
    if inference_only:
        from discretae.estimator.fitted import FittedModel as kind
    else:
        from discretae.estimator.discrete_autoencoder import (
            DiscreteAutoencoder as kind,
        )

    p = Path(path)
    if not p.exists():
        raise DiscretaeError(f"model file {str(p)!r} does not exist")
    if p.is_dir():
        raise DiscretaeError(f"model path {str(p)!r} is a folder, expected a .safetensors file")
    return kind.load(p, device=check_device(device))


def _load_for_model(data: str, est, *, labels=None, strict=False, warn: Warn = None):
    """Load DATA resized to the model's image size; refuse data the model cannot take."""
    from discretae.data.datasets import load_dataset

    shape = tuple(int(v) for v in est.input_shape_)
    if len(shape) == 1:  # a model of flat vectors: no resizing possible
        ds = load_dataset(data, labels=labels, strict=strict, warn=warn)
        if tuple(ds.shape) != shape:
            raise DiscretaeError(
                f"the model expects flat vectors of shape {shape} but {data!r} holds items "
                f"of shape {tuple(ds.shape)}"
            )
        return ds
    c, h, w = shape
    # Channels fixed by the model: a folder is listed, not probed, and each image is made
    # to fit as it is decoded (gray ones repeated into RGB, alpha dropped); only color
    # images for a gray model are refused, when the stream reaches the first of them.
    with _fits_model():
        ds = load_dataset(
            data,
            labels=labels,
            image_size=(h, w),
            channels=c if c in (1, 3) else None,
            gray_from_color=False,
            strict=strict,
            warn=warn,
        )
    if len(ds.shape) != 3 or int(ds.shape[0]) != c:
        got = f"{ds.shape[0]} channel(s)" if len(ds.shape) == 3 else f"flat vectors {ds.shape}"
        raise DiscretaeError(
            f"the model expects images with {c} channel(s) but {data!r} has {got}; "
            "fit a model on data like this one"
        )
    return ds


@contextlib.contextmanager
def _fits_model():
    """Say in the model's terms that a color image cannot go through a gray model."""
    from discretae.data.readers import ColorImageError

    try:
        yield
    except ColorImageError as e:
        raise DiscretaeError(
            f"the model expects gray images (1 channel) but {e.what} is in color "
            f"({e.detail}); fit a model on data like this one"
        ) from None


def _n_codes(est) -> int:
    """How many distinct values one code position takes (2 for binary codes)."""
    return 2 if est.model == "binary" else int(est.n_codes)


# -------------------------------------------------------------------------------- fit
# fit_model's settings when not given (None); a resumed run takes the checkpoint's instead
FIT_DEFAULTS = {
    "model": "gumbel",
    "codes": 10,
    "bits": 16,
    "latent": "global",
    "grid": None,
    "clusters": None,
    "epochs": None,  # the estimator's: 30, or what the clustering recipe needs
    "batch_size": 256,
    "lr": None,  # the estimator's: 1e-3, or 2e-3 for the clustering recipe
    "lr_schedule": None,  # the estimator's: cosine for the clustering recipe, else constant
    "seed": 0,
    "objectives": "auto",
}
# fit_model's setting -> the estimator parameter it sets
_FIT_PARAMS = {
    "model": "model",
    "codes": "n_codes",
    "bits": "n_bits",
    "latent": "latent",
    "grid": "grid",
    "clusters": "n_clusters",
    "epochs": "epochs",
    "batch_size": "batch_size",
    "lr": "lr",
    "lr_schedule": "lr_schedule",
    "seed": "random_state",
    "objectives": "objectives",
}


def default_checkpoint(out: str | os.PathLike) -> Path:
    """Where ``fit`` keeps its checkpoint unless told: ``model.safetensors`` ->
    ``model.ckpt.safetensors`` beside it."""
    p = Path(out)
    return p.with_name(f"{p.stem}.ckpt.safetensors")


def _fit_settings(given: dict, resume) -> dict:
    """Settings from the arguments (None: not given), the defaults, or the checkpoint."""
    if resume is None:
        return {k: FIT_DEFAULTS[k] if v is None else v for k, v in given.items()}
    from discretae.models.checkpoint import read_checkpoint

    params = read_checkpoint(resume).config["params"]
    # a checkpoint from before a setting existed had its default
    settings = {k: params.get(p, FIT_DEFAULTS[k]) for k, p in _FIT_PARAMS.items()}
    settings["grid"] = tuple(settings["grid"]) if settings["grid"] is not None else None
    clash = [
        f"--{k.replace('_', '-')} {v} (checkpoint: {settings[k]})"
        for k, v in given.items()
        if v is not None and v != settings[k]
    ]
    if clash:
        raise DiscretaeError(
            f"cannot resume from {str(resume)!r} with other settings: {', '.join(clash)}; "
            "a resumed run keeps the settings it started with, so leave them out"
        )
    return settings


def fit_model(
    data: str,
    *,
    out: str | os.PathLike,
    model: str | None = None,
    codes: int | None = None,
    bits: int | None = None,
    latent: str | None = None,
    grid: str | tuple[int, int] | None = None,
    clusters: int | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    lr_schedule: str | None = None,
    device: str = "auto",
    seed: int | None = None,
    objectives: str | None = None,
    labels: str | None = None,
    strict: bool = False,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 0,
    resume: str | os.PathLike | None = None,
    callback: Callback = None,
    warn: Warn = None,
) -> dict:
    """Fit a discrete autoencoder on DATA and save it to ``out`` (.safetensors).

    Settings left at None take ``FIT_DEFAULTS`` (model gumbel, 10 codes, batch 256,
    seed 0, objectives "auto", the estimator's epochs and lr, ...), or the checkpoint's
    when resuming. ``objectives`` is :class:`DiscreteAutoencoder`'s: "auto" makes a
    global gumbel code on images the clustering recipe (two augmented views, IIC mutual
    information, InfoNCE, self-labelling, a content/style split), "none"
    reconstruction alone; ``lr_schedule`` its learning-rate curve.

    Checkpoints: the training state is written to ``checkpoint`` (default
    :func:`default_checkpoint` of ``out``) every ``checkpoint_every`` optimisation steps
    (0: never) and on SIGINT/SIGTERM, which then raise ``TrainingInterrupted``.
    ``resume`` continues from a checkpoint, on the same DATA; settings given that
    differ from the checkpoint's are refused. A NaN or infinite loss raises
    ``TrainingDiverged`` naming the step, and leaves the last checkpoint as it was.

    Launched by ``torchrun`` with more than one process, this trains with
    DistributedDataParallel (nccl on GPUs, gloo on CPUs); ``batch_size`` is the global
    batch, and only rank 0 writes the model and checkpoints (the others return
    ``{"rank": r, "model": None}``).

    Returns a summary: the model path, its settings, the number of images, the final
    epoch's loss, code usage and perplexity, the fit time and the per-epoch history.
    """
    from discretae.core import distributed
    from discretae.data.datasets import load_dataset
    from discretae.estimator.discrete_autoencoder import DiscreteAutoencoder

    check_output(out)
    check_device(device)
    grid_hw = parse_grid(grid) if isinstance(grid, str) else grid
    given = {
        "model": model,
        "codes": codes,
        "bits": bits,
        "latent": latent,
        "grid": grid_hw,
        "clusters": clusters,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "lr_schedule": lr_schedule,
        "seed": seed,
        "objectives": objectives,
    }
    s = _fit_settings(given, resume)
    if s["grid"] is not None and s["latent"] != "grid":
        raise DiscretaeError(f"--grid {grid!r} needs --latent grid (got --latent {s['latent']})")
    if checkpoint_every < 0:
        raise DiscretaeError(f"--checkpoint-every must be >= 0, got {checkpoint_every}")
    ckpt = Path(checkpoint) if checkpoint is not None else default_checkpoint(out)
    check_output(ckpt)
    started = distributed.init_from_env(device)
    try:
        ds = load_dataset(data, labels=labels, strict=strict, warn=warn)
        x = ds.to_array()
        est = DiscreteAutoencoder(
            **{param: s[k] for k, param in _FIT_PARAMS.items()},
            device=str(started) if started is not None else device,
            callback=callback,
        )
        start = time.perf_counter()
        est.fit(x, checkpoint=ckpt, checkpoint_every=checkpoint_every, resume=resume)
        seconds = time.perf_counter() - start
        world = distributed.world_size()
        if not distributed.is_main():
            return {"rank": distributed.rank(), "model": None}
        est.save(out)
        if len(est.input_shape_) == 3:  # image models: learn the archive's code prior now
            from discretae.compression.codec import fit_prior, save_prior

            save_prior(out, fit_prior(est, x))
    finally:
        if started is not None:
            distributed.shutdown()
    last = est.history_[-1] if est.history_ else {}
    labeled = ds.labels is not None and bool((ds.labels >= 0).any())
    return {
        "model": str(out),
        "model_type": s["model"],
        "latent": s["latent"],
        "n_codes": s["codes"] if s["model"] != "binary" else None,
        "n_bits": s["bits"] if s["model"] == "binary" else None,
        "grid": list(s["grid"]) if s["grid"] else None,
        "n_clusters": int(est.n_clusters_),
        "data": str(data),
        "n_images": int(len(x)),
        "skipped": len(getattr(ds, "skipped", []) or []),
        "input_shape": [int(v) for v in est.input_shape_],
        "device": str(est.device_),
        "world_size": world,
        "epochs": len(est.history_),
        "objectives": _objectives_in(est.model_),
        "lr_schedule": est.lr_schedule_used(est.model_),
        "final_loss": last.get("loss"),
        "codes_used": last.get("usage"),  # distinct codes in the last epoch
        "perplexity": last.get("perplexity"),
        "fit_seconds": seconds,
        "checkpoint": str(ckpt) if ckpt.exists() else None,
        "resumed_from": str(resume) if resume is not None else None,
        # how the fitted clusters match DATA's labels, when it has any
        "clustering": _scores(ds.labels, est.labels_) if labeled else None,
        "history": list(est.history_),
    }


def _objectives_in(model) -> list[str]:
    """The objectives a fitted model trained with, besides reconstruction."""
    views = model.config.get("objectives") or {}
    from discretae.models.objectives import VIEW_TERMS

    names = [k for k in VIEW_TERMS if views.get(k)]
    return names + (["style"] if model.config.get("style_dim") else [])


# ----------------------------------------------------------------------------- encode
SHARD_FORMAT = "discretae-shard"
_COPY_ROWS = 1 << 16  # rows per chunk when a .npy is copied or merged


class NpyRowWriter:
    """Fills a .npy of known shape row block by row block through short-lived memory
    maps, so resident memory stays bounded however many rows the file gets."""

    def __init__(self, path: Path, dtype: np.dtype, shape: tuple[int, ...]) -> None:
        self.path, self.dtype, self.shape = Path(path), np.dtype(dtype), tuple(shape)
        self.row_bytes = self.dtype.itemsize * int(np.prod(shape[1:], dtype=np.int64))
        self.done = 0
        if shape[0] == 0 or self.row_bytes == 0:  # nothing to map: header only
            with open(self.path, "wb") as f:
                np.lib.format.write_array(f, np.zeros(shape, self.dtype), allow_pickle=False)
            self.offset = None
            return
        mm = np.lib.format.open_memmap(self.path, mode="w+", dtype=self.dtype, shape=self.shape)
        self.offset = mm.offset
        del mm

    def write(self, rows: np.ndarray) -> None:
        """Append rows (k, *shape[1:])."""
        k = len(rows)
        if k == 0:
            return
        if self.done + k > self.shape[0]:
            raise DiscretaeError(f"{self.path}: {self.done + k} rows for a file of {self.shape[0]}")
        view = np.memmap(
            self.path,
            dtype=self.dtype,
            mode="r+",
            offset=self.offset + self.done * self.row_bytes,
            shape=(k, *self.shape[1:]),
        )
        view[:] = rows
        del view  # unmapped: the pages belong to the page cache, not to this process
        self.done += k

    def finish(self) -> None:
        """Shrink the file to the rows written (fewer when files failed to decode)."""
        if self.done == self.shape[0]:
            return
        short = self.path.with_name(self.path.name + ".short")
        part = NpyRowWriter(short, self.dtype, (self.done, *self.shape[1:]))
        src = np.load(self.path, mmap_mode="r")
        for a in range(0, self.done, _COPY_ROWS):
            part.write(src[a : min(a + _COPY_ROWS, self.done)])
        del src
        os.replace(short, self.path)


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


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def _restore_threads(threads: int):
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _file_sha256(path: str | os.PathLike) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def encode_data(
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
    sidecar (:func:`shard_sidecar`) with its rows and names, for :func:`merge_shards`.
    """
    check_output(out)
    if with_names is not None:
        check_output(with_names)
    ij = parse_shard(shard) if isinstance(shard, str) or shard is None else tuple(shard)
    if ij is not None:
        parse_shard(f"{ij[0]}/{ij[1]}")
        check_output(shard_sidecar(out))
    if workers is not None and workers < 0:
        raise DiscretaeError(f"workers must be >= 0, got {workers}")
    began = time.perf_counter()
    est = load_model(model, device, inference_only=True)
    ds = _load_for_model(data, est, strict=strict, warn=warn)
    total = len(ds)
    loaded = time.perf_counter()
    start, stop = shard_range(*ij, total) if ij is not None else (0, total)
    part = ds.subset(start, stop) if ij is not None else ds
    n = len(part)
    top = (int(est.n_clusters_) if clusters else _n_codes(est)) - 1
    dtype = smallest_int_dtype(max(top, 0))
    row_shape = () if clusters else tuple(est.code_shape_)
    done = 0
    threads = torch.get_num_threads()
    if est.device_.type == "cpu":
        # Decoding workers and the model share the cores; oversubscribed, torch's threads
        # spin-wait: 20k PNGs took 24 s with 2 threads beside 1 worker, 5 s with 1 thread.
        from discretae.data.datasets import (  # what batches() picks given None
            FolderDataset,
            auto_workers,
        )

        busy = 0  # arrays are sliced in this process
        if isinstance(part, FolderDataset):
            busy = workers if workers is not None else auto_workers(len(part))
        torch.set_num_threads(max(1, min(threads, _cpu_count() - busy)))
    with atomic_path(out) as tmp, _restore_threads(threads):
        writer = NpyRowWriter(tmp, dtype, (n, *row_shape))
        with torch.inference_mode(), _fits_model():
            for images, _ in part.batches(batch_size, num_workers=workers):
                codes = est.encode_batch(images.to(est.device_))
                rows = est.cluster_ids(codes) if clusters else codes.cpu().numpy()
                writer.write(rows.astype(dtype, copy=False))
                done += len(images)
                if callback is not None:
                    callback({"stage": "encode", "done": done, "total": n})
        writer.finish()
    streamed = time.perf_counter()
    # after the pass: names of files that failed to decode are gone, rows line up
    names = part.names if part.names is not None else [str(i) for i in range(start, stop)]
    if with_names is not None:
        with atomic_path(with_names) as tmp:
            tmp.write_text("".join(f"{name}\n" for name in names))
    result = {
        "out": str(out),
        "kind": "clusters" if clusters else "codes",
        "shape": [writer.done, *row_shape],
        "dtype": str(dtype),
        "n_images": int(writer.done),
        "skipped": len(getattr(part, "skipped", []) or []),
        "names": str(with_names) if with_names is not None else None,
        "shard": None,
        "load_seconds": loaded - began,  # the model, and listing DATA
        "encode_seconds": streamed - loaded,  # decoding, encoding and writing
    }
    if ij is not None:
        sidecar = {
            "format": SHARD_FORMAT,
            "format_version": 1,
            "shard": list(ij),
            "start": start,
            "stop": stop,
            "total": total,
            "rows": writer.done,
            "kind": result["kind"],
            "dtype": str(dtype),
            "row_shape": list(row_shape),
            "data": str(data),
            "model_sha256": _file_sha256(model),
            "names": list(names),
        }
        with atomic_path(shard_sidecar(out)) as tmp:
            tmp.write_text(json.dumps(sidecar))
        result["shard"] = {"index": ij[0], "count": ij[1], "start": start, "stop": stop}
        result["sidecar"] = str(shard_sidecar(out))
    return result


def _read_shard(path: str | os.PathLike) -> dict:
    """A shard's sidecar, checked against its .npy."""
    from discretae.data.readers import read_npy

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
        keys = ("start", "stop", "total", "rows", "kind", "dtype", "row_shape", "names")
        ok = ok and all(k in info for k in keys)
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


def _check_cover(shards: list[dict]) -> None:
    """The shards must come from one run's settings and tile [0, total) exactly."""
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


def merge_shards(
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
    infos = sorted((_read_shard(p) for p in shards), key=lambda s: s["start"])
    _check_cover(infos)
    rows = sum(s["rows"] for s in infos)
    dtype, row_shape = np.dtype(infos[0]["dtype"]), tuple(infos[0]["row_shape"])
    with atomic_path(out) as tmp:
        writer = NpyRowWriter(tmp, dtype, (rows, *row_shape))
        for s in infos:
            for a in range(0, s["rows"], _COPY_ROWS):
                writer.write(np.asarray(s["array"][a : a + _COPY_ROWS]))
                if callback is not None:
                    callback({"stage": "merge", "done": writer.done, "total": rows})
    if with_names is not None:
        with atomic_path(with_names) as tmp:
            tmp.write_text("".join(f"{name}\n" for s in infos for name in s["names"]))
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


# ----------------------------------------------------------------------------- decode
def _to_uint8(images: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(np.asarray(images, np.float32) * 255.0), 0, 255).astype(np.uint8)


def _save_png(path: Path, image: np.ndarray) -> None:
    """Write one uint8 image (H, W) or (H, W, C) as PNG; C must be 1-4."""
    from PIL import Image

    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim == 3 and image.shape[-1] not in (2, 3, 4):
        raise DiscretaeError(f"cannot write {image.shape[-1]}-channel images as PNG")
    Image.fromarray(image).save(path, format="PNG")


def decode_codes(
    codes: str | os.PathLike,
    *,
    model: str | os.PathLike,
    out: str | os.PathLike,
    batch_size: int = 256,
    device: str = "auto",
    callback: Callback = None,
) -> dict:
    """Decode a codes .npy back to images.

    ``out`` ending in ``.png`` gets one montage of the first 400 rows
    (``MONTAGE_MAX``); anything else is a folder
    that gets one PNG per row (``000000.png``, ...). The folder is filled under a
    temporary name and renamed when complete, so no half-written folder remains.
    """
    out = Path(out)
    as_montage = out.suffix.lower() in _IMAGE_SUFFIXES
    if as_montage:
        check_output(out)
    else:
        _check_out_folder(out)
    array = load_npy(codes, "codes")
    if array.dtype.kind not in "iub":
        raise DiscretaeError(
            f"codes in {str(codes)!r} have dtype {array.dtype}, expected integers "
            "(the output of `discretae encode`)"
        )
    if array.ndim == 0 or len(array) == 0:
        raise DiscretaeError(f"codes in {str(codes)!r} hold no rows (shape {array.shape})")
    est = load_model(model, device, inference_only=True)
    if len(est.input_shape_) != 3:
        raise DiscretaeError(
            f"model {str(model)!r} was fitted on flat vectors {tuple(est.input_shape_)}, "
            "not images; decode writes PNG images (use inverse_transform from Python)"
        )
    rows = array[:MONTAGE_MAX] if as_montage else array
    n = len(rows)
    images: list[np.ndarray] = []
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            batch = rows[start : start + batch_size].astype(np.int64)
            images.append(_to_uint8(est.inverse_transform(batch)))
            if callback is not None:
                callback({"stage": "decode", "done": min(start + batch_size, n), "total": n})
    stacked = np.concatenate(images)  # (N, H, W) or (N, H, W, C) uint8
    if as_montage:
        from discretae.evaluation.figures import montage

        montage(stacked if stacked.ndim == 3 else stacked.transpose(0, 3, 1, 2), out, max_images=n)
    else:
        _write_png_folder(out, stacked)
    return {
        "out": str(out),
        "kind": "montage" if as_montage else "folder",
        "n_images": int(n),
        "n_rows": int(len(array)),
        "image_shape": list(stacked.shape[1:]),
    }


def _check_out_folder(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise DiscretaeError(f"output {str(out)!r} exists and is not a folder")
    if out.is_dir():
        if any(out.iterdir()):
            raise DiscretaeError(
                f"output folder {str(out)!r} is not empty; remove it or pick another"
            )
        _probe(out.parent if str(out.parent) else Path("."), out)
    else:
        check_output(out)


def _write_png_folder(out: Path, images: np.ndarray) -> None:
    width = max(6, len(str(len(images) - 1)))
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        for i, image in enumerate(images):
            _save_png(tmp / f"{i:0{width}d}.png", image)
        if out.is_dir():
            out.rmdir()  # empty (checked above); os.replace cannot overwrite a folder
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# --------------------------------------------------------------------------- evaluate
def _check_figures_folder(figures: Path) -> None:
    if figures.exists():
        if not figures.is_dir():
            raise DiscretaeError(f"figures path {str(figures)!r} exists and is not a folder")
        _probe(figures, figures)
    else:
        check_output(figures)  # parent creatable and writable; the folder comes later


class _ClusterSamples:
    """Images and cluster ids kept while streaming, for the per-cluster montage."""

    def __init__(self, n: int, shape: tuple[int, ...]) -> None:
        self.every = max(1, -(-n * int(np.prod(shape)) // _MONTAGE_BYTES))
        self.images: list[np.ndarray] = []
        self.ids: list[np.ndarray] = []
        self.seen = 0

    def add(self, images: np.ndarray, ids: np.ndarray) -> None:
        keep = (np.arange(self.seen, self.seen + len(images)) % self.every) == 0
        self.seen += len(images)
        self.images.append(_to_uint8(images[keep]))
        self.ids.append(ids[keep])


def _usage(codes: np.ndarray, n_codes: int, binary: bool) -> dict:
    """``metrics.code_usage`` plus the per-image code shape (the report's ``codes``)."""
    from discretae.evaluation.metrics import code_usage

    if binary:  # one bit pattern per code position: (N, ..., B) -> (N * positions, B)
        usage = code_usage(codes.reshape(-1, codes.shape[-1]), binary=True)
    else:
        usage = code_usage(codes, n_codes)
    return {**usage, "code_shape": list(codes.shape[1:])}


def _bits(codes: np.ndarray, n_codes: int, archive: dict | None = None) -> dict:
    """Raw and real bits per image; the plug-in entropy only where no archive is made."""
    from discretae.evaluation.metrics import empirical_entropy_bits_per_image, raw_bits_per_image

    bits = {"raw_bits_per_image": raw_bits_per_image(tuple(codes.shape[1:]), n_codes)}
    if archive is not None:  # the size of a real .dae archive of these codes
        bits.update(
            archive_bits_per_image=archive["bits_per_image"],
            archive_bytes=archive["archive_bytes"],
            archive_prior=archive["prior"],
        )
    else:
        bits.update(
            empirical_entropy_bits_per_image=empirical_entropy_bits_per_image(codes),
            empirical_entropy_is_estimate=True,  # plug-in entropy, not a real bitstream
        )
    return bits


def _archive_size(model, est, codes: np.ndarray) -> dict | None:
    """Real archive size of ``codes`` with the model's stored prior, or None without one."""
    if len(est.input_shape_) != 3:
        return None
    from discretae.compression.codec import Codec, load_prior

    prior = load_prior(model)
    return None if prior is None else Codec(est, prior).measure(codes)


def _scores(labels: np.ndarray | None, ids: np.ndarray | None) -> dict | None:
    from discretae.evaluation.metrics import clustering_scores

    if labels is None or ids is None or not (labels >= 0).any():
        return None
    return clustering_scores(labels, ids)


def evaluate(
    data: str | None = None,
    *,
    model: str | os.PathLike | None = None,
    codes: str | os.PathLike | None = None,
    labels: str | os.PathLike | None = None,
    report: str | os.PathLike | None = None,
    figures: str | os.PathLike | None = None,
    batch_size: int = 256,
    device: str = "auto",
    strict: bool = False,
    discriminator: bool = False,
    callback: Callback = None,
    warn: Warn = None,
) -> dict:
    """Score a model on DATA, or saved codes alone; optionally write a report and figures.

    With ``model``: encodes DATA batch by batch and reports clustering scores against the
    labels (``labels`` .npy, else DATA's own labels, else none), code usage and
    perplexity, reconstruction MSE and PSNR, and bits per image (raw fixed-width, and an
    estimated empirical entropy). With ``codes`` (no model, no DATA): clustering scores
    (when there is one id per image) and usage only.

    ``discriminator`` adds the label-free code score (:mod:`discretae.evaluation.discriminator`):
    a classifier learns to tell (image, own code) from (image, another image's code) on
    up to ``DISCRIMINATOR_IMAGES`` images drawn at random (seed 0), scored on held-out
    ones; it needs a model and DATA.

    Returns the report (keys ``discretae.evaluation.report.REPORT_KEYS``), the same dict that is
    written to ``report`` as JSON. ``figures`` is a folder that gets clusters.png,
    contingency.png (with labels), usage.png and reconstructions.png where they apply.
    """
    from discretae.evaluation.report import build_report, write_report

    if (codes is None) == (model is None) or (model is not None and data is None):
        raise DiscretaeError("evaluate needs DATA and a model, or saved codes (not both)")
    if report is not None:
        check_output(report)
    fig_dir = Path(figures) if figures is not None else None
    if fig_dir is not None:
        _check_figures_folder(fig_dir)
    if discriminator and model is None:
        raise DiscretaeError("the discriminator score needs DATA and a model, not saved codes")
    if codes is not None:
        raw = _evaluate_codes(codes, labels, fig_dir)
    else:
        raw = _evaluate_model(
            data, model, labels, fig_dir, batch_size, device, strict, callback, warn, discriminator
        )
    result = build_report(raw)
    if report is not None:
        write_report(report, result)
    return result


def _evaluate_codes(codes, labels, fig_dir: Path | None) -> dict:
    array = load_npy(codes, "codes")
    if array.dtype.kind not in "iub" or array.ndim == 0 or len(array) == 0:
        raise DiscretaeError(
            f"codes in {str(codes)!r} have shape {array.shape} and dtype {array.dtype}; "
            "expected integer codes or cluster ids (N, ...) from `discretae encode`"
        )
    array = array.astype(np.int64)
    if array.min() < 0:
        raise DiscretaeError(f"codes in {str(codes)!r} hold negative values")
    y = load_labels(labels, len(array)) if labels is not None else None
    ids = array if array.ndim == 1 else None  # clustering needs one id per image
    # Without a model the codebook size is unknown: take the largest code seen.
    binary = array.ndim >= 2 and int(array.max()) <= 1  # 0/1 rows read as bit codes
    n_codes = 2 if binary else int(array.max()) + 1
    usage = _usage(array, n_codes, binary)
    clustering = _scores(y, ids)
    figs = []
    if fig_dir is not None:
        from discretae.evaluation.figures import contingency_heatmap, usage_histogram

        fig_dir.mkdir(parents=True, exist_ok=True)
        if "counts" in usage:
            figs.append(usage_histogram(usage["counts"], fig_dir / "usage.png"))
        if clustering is not None:
            figs.append(contingency_heatmap(y, ids, fig_dir / "contingency.png"))
    return {
        "data": {
            "source": str(codes),
            "n_images": int(len(array)),
            "labeled": y is not None,
            "labels": str(labels) if labels is not None else None,
        },
        "clustering": clustering,
        "codes": usage,
        "bits": _bits(array, n_codes),
        "figures": figs,
    }


def _model_section(model, est) -> dict:
    params = est.get_params(deep=False)
    for key in ("callback", "device"):
        params.pop(key, None)
    config = {
        "params": params,
        "input_shape": list(est.input_shape_),
        "code_shape": list(est.code_shape_),
        "n_clusters": int(est.n_clusters_),
    }
    return {"path": str(model), "kind": est.model, "config": config}


# The discriminator score trains on at most this many images (a random subset).
DISCRIMINATOR_IMAGES = 20000


class _PairSample:
    """Keeps the (image, code) pairs of a fixed random subset of rows while streaming."""

    def __init__(self, n: int, seed: int = 0) -> None:
        keep = min(n, DISCRIMINATOR_IMAGES)
        self.rows = np.sort(np.random.default_rng(seed).choice(n, keep, replace=False))
        self.start, self.images, self.codes = 0, [], []

    def add(self, images: np.ndarray, codes: np.ndarray) -> None:
        lo, hi = np.searchsorted(self.rows, [self.start, self.start + len(images)])
        picked = self.rows[lo:hi] - self.start
        self.images.append(images[picked])
        self.codes.append(codes[picked])
        self.start += len(images)

    def score(self, n_values: int, device) -> dict:
        from discretae.evaluation.discriminator import discriminator_score

        images, codes = np.concatenate(self.images), np.concatenate(self.codes)
        return {
            **discriminator_score(images, codes, n_values, device=device),
            "n_images": len(images),
        }


def _evaluate_model(
    data, model, labels, fig_dir, batch_size, device, strict, callback, warn, discriminator=False
):
    from discretae.evaluation.metrics import psnr_from_mse

    est = load_model(model, device)
    ds = _load_for_model(data, est, labels=labels, strict=strict, warn=warn)
    n, n_codes = len(ds), _n_codes(est)
    codes, ids, ys = [], [], []
    sq_err, n_values, done = 0.0, 0, 0
    pictures = fig_dir is not None and len(est.input_shape_) == 3  # flat vectors: no images
    samples = _ClusterSamples(n, tuple(ds.shape))
    pairs = _PairSample(n) if discriminator else None
    originals, recons = [], []
    with torch.inference_mode():
        for images, y in ds.batches(batch_size):
            x = images.to(est.device_)
            c = est.encode_batch(x)
            x_hat = est.decode_batch(c).float()
            sq_err += float(((x_hat - x) ** 2).sum(dtype=torch.float64))
            n_values += x.numel()
            batch_ids = est.cluster_ids(c)  # from the codes, not a second encode
            codes.append(c.cpu().numpy())
            ids.append(batch_ids)
            ys.append(y.numpy())
            if pictures:
                samples.add(images.numpy(), batch_ids)
            if pairs is not None:
                pairs.add(images.numpy(), codes[-1])
            if pictures and sum(map(len, originals)) < _RECON_SHOWN:
                originals.append(images.numpy())
                recons.append(x_hat.cpu().numpy())
            done += len(images)
            if callback is not None:
                callback({"stage": "evaluate", "done": done, "total": n})
    if not codes:
        raise DiscretaeError(f"no readable images in {data!r}")
    code_arr, id_arr = np.concatenate(codes), np.concatenate(ids)
    y_arr = np.concatenate(ys) if ds.labels is not None else None
    mse_value = sq_err / n_values
    usage = _usage(code_arr, n_codes, est.model == "binary")
    if pairs is not None and callback is not None:
        callback({"stage": "discriminator", "done": 0, "total": 1})
    scored = pairs.score(n_codes, est.device_) if pairs is not None else None
    clustering = _scores(y_arr, id_arr)
    figs = []
    if fig_dir is not None:
        from discretae.evaluation import figures as F

        fig_dir.mkdir(parents=True, exist_ok=True)
        if pictures:
            kept, kept_ids = np.concatenate(samples.images), np.concatenate(samples.ids)
            figs.append(F.cluster_montage(kept, kept_ids, fig_dir / "clusters.png"))
        if clustering is not None:
            path = fig_dir / "contingency.png"
            figs.append(F.contingency_heatmap(y_arr, id_arr, path, label_names=ds.label_names))
        if "counts" in usage:
            figs.append(F.usage_histogram(usage["counts"], fig_dir / "usage.png"))
        if pictures:
            figs.append(
                F.reconstruction_grid(
                    np.concatenate(originals)[:_RECON_SHOWN],
                    np.concatenate(recons)[:_RECON_SHOWN],
                    fig_dir / "reconstructions.png",
                )
            )
    skipped = list(getattr(ds, "skipped", []) or [])
    return {
        "data": {
            "source": str(data),
            "n_images": int(len(code_arr)),
            "shape": list(ds.shape),
            "labeled": y_arr is not None,
            "labels": str(labels) if labels is not None else None,
            "label_names": ds.label_names,
            "n_skipped": len(skipped),
            "skipped": skipped[:10],
        },
        "model": _model_section(model, est),
        "clustering": clustering,
        "codes": usage,
        "reconstruction": {"mse": mse_value, "psnr": psnr_from_mse(mse_value), "data_range": 1.0},
        "bits": _bits(code_arr, n_codes, _archive_size(model, est, code_arr)),
        "discriminator": scored,
        "figures": figs,
    }


# ------------------------------------------------------------------------------- demo
# vq and binary, measured on digits (3 seeds, one thread): 30 epochs of batch 32 score
# as well as 50 in about 11 CPU-seconds. gumbel runs the clustering recipe's defaults.
DEMO_EPOCHS, DEMO_BATCH = 30, 32
DEMO_MODELS = ("gumbel", "vq", "binary")


def demo(
    *,
    model: str = "gumbel",
    epochs: int | None = None,
    seed: int = 0,
    out_dir: str | os.PathLike | None = None,
    device: str = "auto",
    callback: Callback = None,
) -> dict:
    """Fit on scikit-learn's digits and compare its clusters with KMeans(10) on raw pixels.

    Both are measured in this run, on the same 1797 images. With ``out_dir``, also
    writes model.safetensors, codes.npy, clusters.npy, report.json and figures/ there.
    Returns ``{"n_images", "discretae": {...}, "kmeans": {...}, "out_dir"}`` where each
    method has nmi, acc, purity, ari, n_clusters_used and seconds.
    """
    from sklearn.cluster import KMeans

    from discretae.data.datasets import load_dataset
    from discretae.estimator.discrete_autoencoder import DiscreteAutoencoder
    from discretae.evaluation.metrics import clustering_scores

    check_device(device)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        _check_figures_folder(out)
    if model not in DEMO_MODELS:
        raise DiscretaeError(f"unknown model {model!r}; valid models: {', '.join(DEMO_MODELS)}")
    recipe = model == "gumbel"  # the clustering recipe: its own epochs, batch and lr
    if epochs is None and not recipe:
        epochs = DEMO_EPOCHS
    ds = load_dataset("digits")
    x, y = ds.to_array(), ds.labels
    start = time.perf_counter()
    threads = torch.get_num_threads()
    # A model this small gains little from intra-op threads, and on a busy 2-core machine
    # they make a fit 3x slower (measured: 64 s against 21 s), so the demo uses one.
    torch.set_num_threads(1)
    try:
        est = DiscreteAutoencoder(
            model=model,
            n_codes=10,
            n_clusters=10,
            epochs=epochs,
            batch_size=256 if recipe else DEMO_BATCH,
            device=device,
            random_state=seed,
            callback=callback,
        ).fit(x)
        ids = est.predict(x)
    finally:
        torch.set_num_threads(threads)
    ours_seconds = time.perf_counter() - start
    start = time.perf_counter()
    km_ids = KMeans(10, n_init=10, random_state=seed).fit_predict(x.reshape(len(x), -1))
    km_seconds = time.perf_counter() - start
    result = {
        "data": "digits",
        "n_images": int(len(x)),
        "epochs": len(est.history_),
        "discretae": {
            "method": f"discretae {model}",
            **clustering_scores(y, ids),
            "seconds": ours_seconds,
        },
        "kmeans": {
            "method": "k-means (pixels)",
            **clustering_scores(y, km_ids),
            "seconds": km_seconds,
        },
        "out_dir": None,
    }
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        est.save(out / "model.safetensors")
        save_npy(out / "codes.npy", est.transform(x).astype(smallest_int_dtype(_n_codes(est) - 1)))
        save_npy(out / "clusters.npy", ids.astype(np.uint8))
        evaluate(
            "digits",
            model=out / "model.safetensors",
            report=out / "report.json",
            figures=out / "figures",
            device=device,
        )
        result["out_dir"] = str(out)
    return result
