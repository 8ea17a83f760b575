"""What the commands share: progress and warning callbacks, loading a model file, and
the one adapter that fits DATA to a model (used by encode, evaluate and compress)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from discretae.core.devices import check_device
from discretae.core.errors import DiscretaeError

Callback = Callable[[dict], None] | None  # called with {"stage", "done", "total"}
Warn = Callable[[str], None] | None  # called with one line per warning


def load_model(path: str | os.PathLike, device: str = "auto", *, inference_only: bool = False):
    """A fitted :class:`DiscreteAutoencoder` from a model file; with ``inference_only`` a
    :class:`~discretae.estimator.fitted.FittedModel`, which encodes and decodes alike without
    importing scikit-learn (for the streaming commands' start-up)."""
    if inference_only:
        from discretae.estimator.fitted import FittedModel as kind
    else:
        from discretae.estimator.discrete_autoencoder import DiscreteAutoencoder as kind

    p = Path(path)
    if not p.exists():
        raise DiscretaeError(f"model file {str(p)!r} does not exist")
    if p.is_dir():
        raise DiscretaeError(f"model path {str(p)!r} is a folder, expected a .safetensors file")
    return kind.load(p, device=check_device(device))


def load_codec(model: str | os.PathLike, device: str = "auto", rate_weight: float = 0.0):
    """The :class:`~discretae.compression.codec.Codec` of a model file: its estimator and
    its stored code prior (the uniform prior when it has none) and refinement table;
    ``rate_weight`` as the codec takes it."""
    from discretae.compression.codec import Codec, load_prior, load_refinement

    est = load_model(model, device)
    return Codec(est, load_prior(model), load_refinement(model), rate_weight=rate_weight)


def load_model_data(data: str, est, *, labels=None, strict: bool = False, warn: Warn = None):
    """DATA as an ImageDataset resized to the model's image size; data the model cannot
    take is refused.

    Channels are fixed by the model: a folder is listed, not probed, and each image is
    made to fit as it is decoded (gray ones repeated into RGB; aspect and transparency
    as the model was fitted, ``est.framing_``). Only color
    images for a gray model are refused, when the stream reaches the first of them: run
    the stream inside :func:`refuse_color_for_gray_model`.
    """
    from discretae.data import load_dataset

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
    with refuse_color_for_gray_model():
        ds = load_dataset(
            data,
            labels=labels,
            image_size=(h, w),
            channels=c if c in (1, 3) else None,
            gray_from_color=False,
            strict=strict,
            warn=warn,
            framing=est.framing_,
        )
    if len(ds.shape) != 3 or int(ds.shape[0]) != c:
        got = f"{ds.shape[0]} channel(s)" if len(ds.shape) == 3 else f"flat vectors {ds.shape}"
        raise DiscretaeError(
            f"the model expects images with {c} channel(s) but {data!r} has {got}; "
            "fit a model on data like this one"
        )
    return ds


def model_batches(
    ds, batch_size: int, *, stage: str, callback: Callback = None, workers: int | None = None
) -> Iterator[tuple]:
    """DATA's batches (images (B, *shape) float32, labels (B,)) for a model to encode,
    the way encode, evaluate and compress all stream them: under ``torch.inference_mode``,
    a color image for a gray model reported in the model's terms, and ``callback`` told
    ``{"stage", "done", "total"}`` once each batch has been used."""
    import torch

    n, done = len(ds), 0
    with torch.inference_mode(), refuse_color_for_gray_model():
        for images, labels in ds.batches(batch_size, num_workers=workers):
            yield images, labels
            done += len(images)
            if callback is not None:
                callback({"stage": stage, "done": done, "total": n})


@contextlib.contextmanager
def refuse_color_for_gray_model() -> Iterator[None]:
    """Turn the reader's ColorImageError into a DiscretaeError that says, in the model's
    terms, that a color image cannot go through a gray model."""
    from discretae.data.readers import ColorImageError

    try:
        yield
    except ColorImageError as e:
        raise DiscretaeError(
            f"the model expects gray images (1 channel) but {e.what} is in color "
            f"({e.detail}); fit a model on data like this one"
        ) from None
