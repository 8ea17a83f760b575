"""``discretae evaluate``: score a model on DATA (or saved codes alone) and write the JSON
report and its figures."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
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
from discretae.core.arrays import load_npy
from discretae.core.errors import DiscretaeError
from discretae.core.files import check_output, check_writable_folder
from discretae.quantizers.base import alphabet_size

RECON_SHOWN = 16  # originals vs reconstructions shown in the figure


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
    perplexity, reconstruction MSE and PSNR, and bits per image (raw fixed-width, and the
    real size of a ``.dae`` archive when the model has a code prior, else an estimated
    empirical entropy). With ``codes`` (no model, no DATA): clustering scores (when there
    is one id per image) and usage only.

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
        check_writable_folder(fig_dir, "figures path")
    if discriminator and model is None:
        raise DiscretaeError("the discriminator score needs DATA and a model, not saved codes")
    if codes is not None:
        raw = _evaluate_codes(codes, labels, fig_dir)
    else:
        raw = _evaluate_model(
            data,
            model,
            labels=labels,
            fig_dir=fig_dir,
            batch_size=batch_size,
            device=device,
            strict=strict,
            discriminator=discriminator,
            callback=callback,
            warn=warn,
        )
    result = build_report(raw)
    if report is not None:
        write_report(report, result)
    return result


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


# ----------------------------------------------------------------------- saved codes
def _evaluate_codes(codes, labels, fig_dir: Path | None) -> dict:
    from discretae.evaluation.sections import bits_section, clustering_section, usage_section

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
    usage = usage_section(array, n_codes, binary)
    clustering = clustering_section(y, ids)
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
        "bits": bits_section(array, n_codes),
        "figures": figs,
    }


# ----------------------------------------------------------------- a model on DATA
@dataclass
class _Pass:
    """What one pass of DATA through the model keeps."""

    codes: list = field(default_factory=list)
    ids: list = field(default_factory=list)
    labels: list = field(default_factory=list)
    sq_err: float = 0.0
    n_values: int = 0
    samples: object = None  # ClusterSamples, for the montage (pictures only)
    pairs: object = None  # PairSample, for the discriminator score
    originals: list = field(default_factory=list)  # for the reconstruction figure
    recons: list = field(default_factory=list)


def _stream(ds, est, *, pictures: bool, discriminator: bool, batch_size: int, callback) -> _Pass:
    """Encode and decode DATA batch by batch, keeping codes, ids and samples."""
    from discretae.evaluation.samples import ClusterSamples, PairSample

    n = len(ds)
    kept = _Pass(samples=ClusterSamples(n, tuple(ds.shape)) if pictures else None)
    kept.pairs = PairSample(n) if discriminator else None
    for images, y in model_batches(ds, batch_size, stage="evaluate", callback=callback):
        x = images.to(est.device_)
        c = est.encode_batch(x)
        x_hat = est.decode_batch(c).float()
        kept.sq_err += float(((x_hat - x) ** 2).sum(dtype=torch.float64))
        kept.n_values += x.numel()
        batch_ids = est.cluster_ids(c)  # from the codes, not a second encode
        kept.codes.append(c.cpu().numpy())
        kept.ids.append(batch_ids)
        kept.labels.append(y.numpy())
        if pictures:
            kept.samples.add(images.numpy(), batch_ids)
        if kept.pairs is not None:
            kept.pairs.add(images.numpy(), kept.codes[-1])
        if pictures and sum(map(len, kept.originals)) < RECON_SHOWN:
            kept.originals.append(images.numpy())
            kept.recons.append(x_hat.cpu().numpy())
    return kept


def _evaluate_model(
    data, model, *, labels, fig_dir, batch_size, device, strict, discriminator, callback, warn
) -> dict:
    from discretae.evaluation.metrics import psnr_from_mse
    from discretae.evaluation.sections import bits_section, clustering_section, usage_section

    est = load_model(model, device)
    ds = load_model_data(data, est, labels=labels, strict=strict, warn=warn)
    n_codes = alphabet_size(est.model, est.n_codes)
    pictures = fig_dir is not None and len(est.input_shape_) == 3  # flat vectors: no images
    kept = _stream(
        ds,
        est,
        pictures=pictures,
        discriminator=discriminator,
        batch_size=batch_size,
        callback=callback,
    )
    if not kept.codes:
        raise DiscretaeError(f"no readable images in {data!r}")
    code_arr, id_arr = np.concatenate(kept.codes), np.concatenate(kept.ids)
    y_arr = np.concatenate(kept.labels) if ds.labels is not None else None
    mse_value = kept.sq_err / kept.n_values
    usage = usage_section(code_arr, n_codes, est.model == "binary")
    if kept.pairs is not None and callback is not None:
        callback({"stage": "discriminator", "done": 0, "total": 1})
    scored = kept.pairs.score(n_codes, est.device_) if kept.pairs is not None else None
    clustering = clustering_section(y_arr, id_arr)
    figs = []
    if fig_dir is not None:
        figs = _model_figures(fig_dir, kept, usage, clustering, y_arr, id_arr, ds.label_names)
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
        "bits": bits_section(code_arr, n_codes, _archive_size(model, est, code_arr)),
        "discriminator": scored,
        "figures": figs,
    }


def _model_figures(fig_dir: Path, kept: _Pass, usage, clustering, y, ids, label_names) -> list:
    """Write the figures that apply; returns their paths."""
    from discretae.evaluation import figures as F

    fig_dir.mkdir(parents=True, exist_ok=True)
    figs = []
    if kept.samples is not None:
        images, sample_ids = np.concatenate(kept.samples.images), np.concatenate(kept.samples.ids)
        figs.append(F.cluster_montage(images, sample_ids, fig_dir / "clusters.png"))
    if clustering is not None:
        path = fig_dir / "contingency.png"
        figs.append(F.contingency_heatmap(y, ids, path, label_names=label_names))
    if "counts" in usage:
        figs.append(F.usage_histogram(usage["counts"], fig_dir / "usage.png"))
    if kept.samples is not None:
        figs.append(
            F.reconstruction_grid(
                np.concatenate(kept.originals)[:RECON_SHOWN],
                np.concatenate(kept.recons)[:RECON_SHOWN],
                fig_dir / "reconstructions.png",
            )
        )
    return figs


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


def _archive_size(model, est, codes: np.ndarray) -> dict | None:
    """Real archive size of ``codes`` with the model's stored prior, or None without one."""
    if len(est.input_shape_) != 3:
        return None
    from discretae.compression.codec import Codec, load_prior

    prior = load_prior(model)
    return None if prior is None else Codec(est, prior).measure(codes)
