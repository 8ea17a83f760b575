"""``discretae fit``: fit a discrete autoencoder on DATA and save it (with its code prior).

Images are brought to one working size: ``image_size`` ("HxW", or one number for the
longer side), else for a folder its most common size with the longer side brought down
to 32 px when larger (arrays keep theirs). ``resize`` keeps the aspect ratio by padding
("pad", the default) or centre-cropping ("crop"), or stretches ("stretch");
transparency and pad margins take ``background`` ("white", "black", "gray" or
"#RRGGBB"). The model stores all three, and encode, evaluate and compress frame every
input the same way. Before training, the memory the fit needs is estimated
(:mod:`discretae.models.memory`) and brought under ``max_memory`` ("2G", ...; default 70%
of the memory available now) by halving the working size (when not given) and then the
batch; when nothing fits, DiscretaeError says so before any work.

An image model is saved with the archive's code prior
(:func:`~discretae.compression.fitting.fit_prior`), of kind ``prior``: "auto" (the
context tables or the learned network, whichever codes held-out training images in
fewer bits), "context" or "learned".
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from discretae.commands.common import Callback, Warn
from discretae.core.devices import check_device
from discretae.core.errors import DiscretaeError
from discretae.core.files import check_output

# fit's settings when not given (None); a resumed run takes the checkpoint's instead
FIT_DEFAULTS = {
    "model": "gumbel",
    "codes": None,  # the model's: MODEL_CODES, else 10
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
    "image_size": None,  # a folder: its most common size, longer side at most 32 px
    "resize": "pad",
    "background": "white",
    "decoder": "auto",  # the estimator's: light for the clustering recipe, else full
    "precision": "auto",  # the estimator's: bfloat16 for the recipe on a CPU that has it
    "ensemble": 1,  # members whose consensus is kept (clustering models)
    "heads": 1,  # code heads trained at once (clustering models); objective_options
    # the code trained toward k-means clusters of the contrastive embedding after the
    # fit (clustering models); objective_options, OBJECTIVE_DEFAULTS's default
    "embedding_kmeans": False,
    # augmentation ranges other than the defaults ("erase=0.25,flip=0.5"), for the view
    # objectives (models.augment.AugmentConfig); objective_options
    "augment": None,
}
# codes per level when --codes is not given, by model (others: 10): 256 makes rvq a
# compressor by itself (benchmarks/rate_distortion.py fits 7x7 grids of 256 codes)
MODEL_CODES = {"rvq": 256}
OTHER_CODES = 10
# fit's setting -> the estimator parameter it sets
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
    "image_size": "image_size",
    "resize": "resize",
    "background": "background",
    "decoder": "decoder",
    "precision": "precision",
    "ensemble": "ensemble",
}
# fit's settings that are objective_options of the estimator
_OPTION_SETTINGS = ("heads", "embedding_kmeans", "augment")


def default_checkpoint(out: str | os.PathLike) -> Path:
    """Where ``fit`` keeps its checkpoint unless told: ``model.safetensors`` ->
    ``model.ckpt.safetensors`` beside it."""
    p = Path(out)
    return p.with_name(f"{p.stem}.ckpt.safetensors")


def parse_grid(grid: str | None) -> tuple[int, int] | None:
    """``"7x7"`` -> ``(7, 7)``; ``None`` stays ``None``."""
    if grid is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", grid)
    if m is None or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise DiscretaeError(f"grid {grid!r} should look like HxW with positive sizes, e.g. 7x7")
    return int(m.group(1)), int(m.group(2))


def fit(
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
    image_size: str | int | tuple[int, int] | None = None,
    resize: str | None = None,
    background: str | None = None,
    decoder: str | None = None,
    precision: str | None = None,
    ensemble: int | None = None,
    heads: int | None = None,
    embedding_kmeans: bool | None = None,
    augment: str | dict | None = None,
    max_memory: str | int | None = None,
    prior: str = "auto",
    labels: str | None = None,
    strict: bool = False,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 0,
    resume: str | os.PathLike | None = None,
    callback: Callback = None,
    warn: Warn = None,
) -> dict:
    """Fit a discrete autoencoder on DATA and save it to ``out`` (.safetensors).

    Settings left at None take ``FIT_DEFAULTS`` (model gumbel, 10 codes or 256 for rvq,
    batch 256, seed 0, objectives "auto", the estimator's epochs and lr, ...), or the
    checkpoint's when resuming. ``objectives``, ``lr_schedule``, ``decoder``, ``precision``
    and ``ensemble`` are :class:`DiscreteAutoencoder`'s: "auto" objectives make a global
    gumbel code on images the clustering recipe, "none" reconstruction alone; "auto"
    decoder and precision the recipe's light decoder and bfloat16 where the CPU has it;
    ``ensemble`` N > 1 keeps N seeds' consensus; ``heads``, ``embedding_kmeans``,
    ``augment`` (:func:`parse_augment`): its ``objective_options``.

    ``image_size``, ``resize``, ``background``, ``max_memory``, ``prior``: module docstring.
    Checkpoints: the training state is written to ``checkpoint`` (default
    :func:`default_checkpoint` of ``out``) every ``checkpoint_every`` optimisation steps
    (0: never) and on SIGINT/SIGTERM, which then raise ``TrainingInterrupted``.
    ``resume`` continues from a checkpoint, on the same DATA; settings given that
    differ from the checkpoint's are refused. A NaN or infinite loss raises
    ``TrainingDiverged`` naming the step, and leaves the last checkpoint as it was.

    Under ``torchrun`` with several processes it trains with DistributedDataParallel;
    ``batch_size`` is the global batch; only rank 0 writes (the others return
    ``{"rank": r, "model": None}``). Returns a summary: the settings, the working size
    and memory plan, the final loss, code usage, the fit time and the history.
    """
    check_output(out)
    check_device(device)
    _check_prior(prior)
    given = _parsed({k: v for k, v in locals().items() if k in FIT_DEFAULTS})  # None: not given
    budget = _memory_budget(max_memory)
    settings = _fit_settings(given, resume)
    if settings["grid"] is not None and settings["latent"] != "grid":
        raise DiscretaeError(
            f"--grid {grid!r} needs --latent grid (got --latent {settings['latent']})"
        )
    ckpt = _checkpoint_path(out, checkpoint, checkpoint_every)
    io = {"device": device, "labels": labels, "strict": strict, "resume": resume, "prior": prior}
    run = _train_and_save(
        data, settings, out, ckpt, **io, checkpoint_every=checkpoint_every,
        callback=callback, warn=warn, budget=budget,
    )  # fmt: skip
    if run.est is None:
        return {"rank": run.rank, "model": None}
    return _summary(run, settings, data=data, out=out, ckpt=ckpt, resume=resume)


def _check_prior(prior: str) -> None:
    from discretae.compression.fitting import check_prior_kind

    check_prior_kind(prior)


def _checkpoint_path(out, checkpoint, checkpoint_every: int) -> Path:
    """The checkpoint file, checked writable; ``checkpoint_every`` checked >= 0."""
    if checkpoint_every < 0:
        raise DiscretaeError(f"--checkpoint-every must be >= 0, got {checkpoint_every}")
    ckpt = Path(checkpoint) if checkpoint is not None else default_checkpoint(out)
    check_output(ckpt)
    return ckpt


def _fit_settings(given: dict, resume) -> dict:
    """Settings from the arguments (None: not given), the defaults, or the checkpoint."""
    if resume is None:
        settings = {k: FIT_DEFAULTS[k] if v is None else v for k, v in given.items()}
        if settings["codes"] is None:
            settings["codes"] = MODEL_CODES.get(settings["model"], OTHER_CODES)
        return settings
    from discretae.estimator.resume import checkpoint_params
    from discretae.models.checkpoint import read_checkpoint

    params = checkpoint_params(read_checkpoint(resume).config)
    settings = {k: params.get(p, FIT_DEFAULTS[k]) for k, p in _FIT_PARAMS.items()}
    options = params.get("objective_options") or {}
    for key in _OPTION_SETTINGS:
        settings[key] = options.get(key, FIT_DEFAULTS[key])
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
    return {**settings, "resumed": True}


@dataclass
class _Run:
    """What one process's training left: the estimator (None on ranks other than 0)."""

    est: object | None
    dataset: object | None
    n_images: int
    seconds: float
    world_size: int
    rank: int
    plan: dict | None = None
    prior: dict | None = None  # how the archive's code prior was chosen (image models)


def _train_and_save(
    data,
    settings,
    out,
    ckpt,
    *,
    device,
    labels,
    strict,
    checkpoint_every,
    resume,
    prior,
    callback,
    warn,
    budget,
) -> _Run:
    """Load DATA at its working size, plan the memory, fit (under DDP when torchrun
    started several processes), and on rank 0 save the model with, for image models,
    the archive's code prior."""
    from discretae.core import distributed

    started = distributed.init_from_env(device)
    try:
        ds, est, plan = _planned_fit(data, settings, labels, strict, warn, budget)
        est.set_params(device=str(started) if started is not None else device)
        est.set_params(callback=callback)
        x = ds.to_array()
        start = time.perf_counter()
        est.fit(x, checkpoint=ckpt, checkpoint_every=checkpoint_every, resume=resume)
        seconds = time.perf_counter() - start
        world = distributed.world_size()
        if not distributed.is_main():
            return _Run(None, None, len(x), seconds, world, distributed.rank(), plan)
        if settings["embedding_kmeans"] and est.recluster_ is None and warn is not None:
            warn(
                "--embedding-kmeans did nothing: it needs a clustering model whose code is "
                "the cluster (gumbel or vq, no --clusters) trained with the contrastive "
                "objective"
            )
        est.save(out)
        if len(est.input_shape_) == 3:  # image models: learn the archive's code prior now
            from discretae.compression.codec import save_prior
            from discretae.compression.fitting import fit_prior, fit_refinement

            # a grid model compresses: it also gets the refinement table (compress
            # --max-error); a global code is for clustering, and codes every residual
            # value with one distribution
            grid = bool(est.model_.latent_shape)  # () for a global code
            code_prior = fit_prior(est, x, kind=prior, callback=callback)
            refinement = fit_refinement(est, x) if grid else None
            save_prior(out, code_prior, refinement=refinement)
            choice = code_prior.choice
        else:
            choice = None
        return _Run(est, ds, len(x), seconds, world, 0, plan, choice)
    finally:
        if started is not None:
            distributed.shutdown()


def _planned_fit(data, settings, labels, strict, warn, budget):
    """DATA at its working size and an estimator whose estimated memory fits ``budget``;
    -> (dataset, estimator, the plan for the summary)."""
    from discretae.data import load_dataset
    from discretae.data.framing import Framing, default_working_size, parse_background

    framing = Framing(settings["resize"], parse_background(settings["background"]))
    ds = load_dataset(data, labels=labels, strict=strict, warn=warn, framing=framing)
    size, given = _working_size(ds, settings["image_size"], default_working_size)
    if size is not None and size != tuple(ds.shape[1:]):
        ds = ds.at_size(size)
    batch = int(settings["batch_size"])
    while True:
        est = _estimator(settings, size, batch)
        need = est.fit_memory(tuple(ds.shape), len(ds))["total"]
        if budget is None or need <= budget:
            break
        if size is not None and not given and max(size) > 16:
            size = _halved(size)
            ds = ds.at_size(size)
        elif batch > 16:
            batch //= 2
        else:
            raise DiscretaeError(
                f"the fit needs about {need / 2**20:.0f} MB ({len(ds)} images of "
                f"{tuple(ds.shape)}, batch {batch}) but {budget / 2**20:.0f} MB is "
                "allowed; give a smaller --image-size or --batch-size, or more --max-memory"
            )
    plan = {
        "working_size": list(size) if size is not None else None,
        "batch_size": batch,
        "memory_estimate_mb": round(need / 2**20),
        "memory_budget_mb": round(budget / 2**20) if budget is not None else None,
    }
    return ds, est, plan


def _estimator(settings, size, batch):
    from discretae.estimator.discrete_autoencoder import DiscreteAutoencoder

    params = {param: settings[k] for k, param in _FIT_PARAMS.items()}
    options = {k: settings[k] for k in _OPTION_SETTINGS if settings[k] != FIT_DEFAULTS[k]}
    if options:
        params["objective_options"] = options
    # a resumed checkpoint without a working size (an estimator's fit on arrays, or one
    # from before the setting) keeps none: the data's own size
    keep_none = settings.get("resumed") and settings["image_size"] is None
    params.update(image_size=None if keep_none else size, batch_size=batch)
    return DiscreteAutoencoder(**params)


def _working_size(ds, setting, default_working_size):
    """-> (the working size (H, W) or None for flat vectors, whether the user gave it)."""
    from discretae.data.framing import longer_side_to

    if ds.flat:
        if setting is not None:
            raise DiscretaeError("--image-size applies to images, not to flat vectors")
        return None, False
    natural = tuple(int(v) for v in ds.shape[1:])
    if setting is None:
        folder = ds.names is not None
        return (default_working_size(natural) if folder else natural), False
    if isinstance(setting, int):
        return longer_side_to(natural, setting), True
    return tuple(setting), True


def _halved(size: tuple[int, int]) -> tuple[int, int]:
    return max(1, size[0] // 2), max(1, size[1] // 2)


def _parsed(given: dict) -> dict:
    """The settings given as text (grid, image size, augmentation) in their parsed form."""
    grid = given["grid"]
    given["grid"] = parse_grid(grid) if isinstance(grid, str) else grid
    given["image_size"] = _size_setting(given["image_size"])
    given["augment"] = parse_augment(given["augment"])
    return given


def parse_augment(text: str | dict | None) -> dict | None:
    """``"erase=0.25,flip=0.5"`` -> ``{"erase": 0.25, "flip": 0.5}``: augmentation ranges
    that replace the defaults of :class:`~discretae.models.augment.AugmentConfig`, checked
    there; a dict is checked the same way; None stays None."""
    from discretae.models.augment import AugmentConfig

    if text is None:
        return None
    names = AugmentConfig.__dataclass_fields__
    usage = f"--augment takes NAME=VALUE pairs joined by commas, NAME one of {', '.join(names)}"
    if isinstance(text, dict):
        ranges = dict(text)
    else:
        pairs = [p.partition("=") for p in str(text).split(",") if p.strip()]
        try:
            ranges = {k.strip(): float(v) for k, sep, v in pairs if sep}
        except ValueError:
            raise DiscretaeError(f"{usage}; got {text!r}") from None
        if len(ranges) != len(pairs) or not ranges:
            raise DiscretaeError(f"{usage}; got {text!r}")
    unknown = sorted(set(ranges) - set(names))
    if unknown:
        raise DiscretaeError(f"{usage}; got {', '.join(unknown)}")
    AugmentConfig(**ranges)  # its ranges' checks, as DiscretaeError
    return ranges


def _size_setting(image_size):
    """``--image-size`` as (H, W), an int (the longer side), or None."""
    from discretae.data.framing import check_size, parse_image_size

    if image_size is None or isinstance(image_size, int):
        if isinstance(image_size, int) and image_size < 1:
            raise DiscretaeError(f"--image-size must be positive, got {image_size}")
        return image_size
    if isinstance(image_size, str):
        return parse_image_size(image_size)
    return check_size(image_size)


def _memory_budget(max_memory) -> int | None:
    """Bytes a fit may use: ``max_memory``, else 70% of what is available now."""
    from discretae.models.memory import available_bytes, parse_bytes

    if max_memory is not None:
        return parse_bytes(max_memory) if isinstance(max_memory, str) else int(max_memory)
    free = available_bytes()
    return None if free is None else int(0.7 * free)


def _summary(run: _Run, s: dict, *, data, out, ckpt: Path, resume) -> dict:
    """fit's result: the model's settings and what the fit did."""
    from discretae.evaluation.sections import clustering_section

    est, ds = run.est, run.dataset
    last = est.history_[-1] if est.history_ else {}
    return {
        "model": str(out),
        "model_type": s["model"],
        "latent": s["latent"],
        "n_codes": s["codes"] if s["model"] != "binary" else None,
        "n_bits": s["bits"] if s["model"] == "binary" else None,
        # rvq: codes_used and perplexity count distinct tuples of one code per level
        "levels": getattr(est.model_.quantizer, "levels", None),
        "grid": est.model_.config.get("grid"),  # given, or the encoder's feature map
        "n_clusters": int(est.n_clusters_),
        "data": str(data),
        "n_images": int(run.n_images),
        "skipped": len(getattr(ds, "skipped", []) or []),
        "input_shape": [int(v) for v in est.input_shape_],
        **(run.plan or {}),
        "resize": s["resize"],
        "background": s["background"],
        "decoder": est.model_.config.get("decoder", "full"),
        "precision": _precision_used(est),
        "device": str(est.device_),
        "world_size": run.world_size,
        "epochs": sum(not h.get("rolled_back") for h in est.history_),
        # epochs whose loss spiked and were undone and run again (train's spike guard)
        "rolled_back": [h["epoch"] for h in est.history_ if h.get("rolled_back")],
        "objectives": _objectives_in(est.model_),
        "augment": s["augment"],  # the ranges given instead of the defaults, or None
        "mirror": est.mirror_,  # the flips the data chose (models.mirror), or None
        "lr_schedule": est.lr_schedule_used(est.model_),
        "final_loss": last.get("loss"),
        "codes_used": last.get("usage"),  # distinct codes in the last epoch
        "perplexity": last.get("perplexity"),
        "fit_seconds": run.seconds,
        "prior": run.prior,
        "ensemble": est.ensemble_,
        "heads": est.heads_,
        "recluster": est.recluster_,
        "checkpoint": str(ckpt) if ckpt.exists() else None,
        "resumed_from": str(resume) if resume is not None else None,
        # how the fitted clusters match DATA's labels, when it has any
        "clustering": clustering_section(ds.labels, est.labels_),
        "history": list(est.history_),
    }


def _objectives_in(model) -> list[str]:
    """The objectives a fitted model trained with, besides reconstruction."""
    from discretae.models.objectives import VIEW_TERMS

    views = model.config.get("objectives") or {}
    names = [k for k in VIEW_TERMS if views.get(k)]
    return names + (["style"] if model.config.get("style_dim") else [])


def _precision_used(est) -> str:
    """What the networks trained in: the estimator's precision on the fit's device."""
    dtype = est.training_dtype(est.model_, est.device_)
    return "float32" if dtype is None else str(dtype).removeprefix("torch.")
