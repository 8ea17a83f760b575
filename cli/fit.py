"""`discretae fit`: train a discrete autoencoder and save it as one .safetensors file."""

from __future__ import annotations

from enum import Enum
from functools import partial
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from discretae.cli._fit_records import (
    augment_row,
    ensemble_row,
    heads_row,
    mirror_row,
    recluster_row,
)
from discretae.cli._output import rows_table
from discretae.cli.options import (
    BatchSize,
    Data,
    DecoderKind,
    Device,
    Json,
    Latent,
    LrSchedule,
    ModelKind,
    Precision,
    PriorKind,
    Quiet,
    ResizeMode,
    Strict,
    output,
)
from discretae.cli.runner import run

# fit's own options, named here so that its signature reads as a list
Model = Annotated[
    ModelKind,
    Quiet,
    ResizeMode,
    typer.Option("--model", "-m", help="vq, gumbel (one-hot), binary, or rvq (residual VQ)."),
]
Codes = Annotated[
    int | None,
    typer.Option(
        "--codes",
        "-k",
        min=1,
        help="Codebook size (vq, gumbel), or codes per level (rvq) [default: 10; 256 for rvq].",
        show_default=False,
    ),
]
Bits = Annotated[int, typer.Option("--bits", min=1, help="Bits per code (binary).")]
LatentOption = Annotated[
    Latent, typer.Option("--latent", help="One code per image, or a grid of codes.")
]
Grid = Annotated[str | None, typer.Option("--grid", help="Grid size for --latent grid, e.g. 7x7.")]
Clusters = Annotated[
    int | None,
    typer.Option("--clusters", min=1, help="k-means clusters over binary or grid codes."),
]
Epochs = Annotated[
    int | None,
    typer.Option(
        "--epochs",
        "-e",
        min=1,
        help="Passes over the data [default: 30; with the clustering objectives, "
        "about 2000 steps, fewer on larger images (a cost cap), 12 to 300].",
        show_default=False,
    ),
]
LearningRate = Annotated[
    float | None,
    typer.Option(
        "--lr",
        min=0.0,
        help="Adam learning rate [default: 1e-3; 2e-3 with the clustering objectives].",
        show_default=False,
    ),
]
Schedule = Annotated[
    LrSchedule | None,
    typer.Option(
        "--lr-schedule",
        help="Learning-rate curve: constant, cosine (decays to 0 over the run), or "
        "hold-cosine (flat for 80% of the steps, then a cosine) [default: cosine "
        "with the clustering objectives, else constant].",
        show_default=False,
    ),
]
Seed = Annotated[int, typer.Option("--seed", help="Random seed.")]
ImageSize = Annotated[
    str | None,
    typer.Option(
        "--image-size",
        "-s",
        help="Working size: HxW (e.g. 64x64), or one number for the longer side "
        "[default: a folder's most common size, longer side brought down to 32 px; "
        "arrays keep theirs].",
        show_default=False,
    ),
]
Resize = Annotated[
    ResizeMode,
    typer.Option(
        "--resize", help="Keep the aspect ratio by padding or centre-cropping, or stretch."
    ),
]
Decoder = Annotated[
    DecoderKind,
    Precision,
    typer.Option(
        "--decoder",
        help="full, light (no full-resolution decoder stage: about twice as fast to "
        "train on 32x32 colour images on a CPU), or auto: light for the clustering "
        "recipe, full otherwise.",
    ),
]
PrecisionOption = Annotated[
    Precision,
    typer.Option(
        "--precision",
        help="What the encoder and decoder train in: float32, bfloat16, or auto: bfloat16 "
        "for the clustering recipe on a CPU that computes it in hardware (about twice as "
        "fast), else float32.",
    ),
]
Background = Annotated[
    str,
    typer.Option(
        "--background",
        help="Colour under transparent pixels and in pad margins: white, black, gray or #RRGGBB.",
    ),
]
MaxMemory = Annotated[
    str | None,
    typer.Option(
        "--max-memory",
        help="Memory the fit may use, e.g. 4G; the working size (when not given) and then "
        "the batch are halved until the estimate fits [default: 70% of available memory].",
        show_default=False,
    ),
]
Ensemble = Annotated[
    int,
    typer.Option(
        "--ensemble",
        min=1,
        help="Fit N seeds (SEED, SEED+1, ...) of a clustering model and keep their "
        "consensus, distilled into one model: steadier clusters for about N times the "
        "time.",
    ),
]
Heads = Annotated[
    int,
    typer.Option(
        "--heads",
        min=1,
        help="Train N code heads of a clustering model at once and keep the one the "
        "others agree with most (no labels).",
    ),
]
EmbeddingKmeans = Annotated[
    bool | None,
    typer.Option(
        "--embedding-kmeans/--no-embedding-kmeans",
        help="After fitting a clustering model, train its code toward k-means clusters of "
        "its contrastive embedding (no labels) [default: off].",
        show_default=False,
    ),
]
AugmentOption = Annotated[
    str | None,
    typer.Option(
        "--augment",
        help="Augmentation ranges other than the defaults for the view objectives, e.g. "
        "'erase=0.25,flip=0.5' (flip, the chance of a mirrored view, is otherwise chosen "
        "from the data: on where mirror images are images of the same kind); "
        "names: rotate, scale, shear, translate, flip, erase, jitter, noise.",
        show_default=False,
    ),
]
PriorOption = Annotated[
    PriorKind,
    typer.Option(
        "--prior",
        help="The archive's code prior (image models): context tables, a learned causal "
        "network (smaller archives, slower to decode), or auto: whichever codes held-out "
        "training images in fewer bits.",
    ),
]
Objectives = Annotated[
    str,
    typer.Option(
        "--objectives",
        help="What trains the code besides reconstruction: a comma list of mi (IIC "
        "mutual information between two augmented views), contrastive (InfoNCE), "
        "critic (the code discriminator), selflabel (a view's confident code is "
        "the other view's target), neighbours (SCAN: an image's code should match "
        "that of one of its 10 nearest neighbours in the contrastive embedding; "
        "opt-in), style (a continuous style latent beside the code); 'none'; or "
        "'auto' = mi,contrastive,selflabel,style for a global gumbel code on images, "
        "else none.",
    ),
]
Labels = Annotated[
    Path | None,
    typer.Option(
        "--labels",
        help="Labels (.npy, or CSV for folders) to score the fitted clusters against "
        "(default: DATA's own labels, if any).",
    ),
]
Out = Annotated[Path, output("Where to write the model.")]
CheckpointEvery = Annotated[
    int,
    typer.Option(
        "--checkpoint-every",
        min=0,
        help="Write a checkpoint every N optimisation steps (0: only on Ctrl-C).",
    ),
]
Checkpoint = Annotated[
    Path | None,
    typer.Option(
        "--checkpoint",
        dir_okay=False,
        help="Checkpoint file (default: OUT with .ckpt.safetensors, e.g. model.ckpt.safetensors).",
    ),
]
Resume = Annotated[
    Path | None,
    typer.Option(
        "--resume",
        exists=True,
        dir_okay=False,
        help="Continue from a checkpoint, with its settings, on the same DATA.",
    ),
]
# passed to the library as given; the settings (FIT_DEFAULTS) only when typed
PASSED_AS_GIVEN = (
    "out",
    "device",
    "strict",
    "checkpoint",
    "checkpoint_every",
    "resume",
    "max_memory",
    "prior",
)


def fit(
    ctx: typer.Context,
    data: Data,
    model: Model = ModelKind.gumbel,
    codes: Codes = None,
    bits: Bits = 16,
    latent: LatentOption = Latent.global_,
    grid: Grid = None,
    clusters: Clusters = None,
    epochs: Epochs = None,
    batch_size: BatchSize = 256,
    lr: LearningRate = None,
    lr_schedule: Schedule = None,
    device: Device = "auto",
    seed: Seed = 0,
    objectives: Objectives = "auto",
    image_size: ImageSize = None,
    resize: Resize = ResizeMode.pad,
    background: Background = "white",
    decoder: Decoder = DecoderKind.auto,
    precision: PrecisionOption = Precision.auto,
    ensemble: Ensemble = 1,
    heads: Heads = 1,
    embedding_kmeans: EmbeddingKmeans = None,
    augment: AugmentOption = None,
    max_memory: MaxMemory = None,
    prior: PriorOption = PriorKind.auto,
    labels: Labels = None,
    out: Out = Path("model.safetensors"),
    checkpoint_every: CheckpointEvery = 0,
    checkpoint: Checkpoint = None,
    resume: Resume = None,
    strict: Strict = False,
    quiet: Quiet = False,
    json: Json = False,
) -> None:
    """Fit a discrete autoencoder on DATA and save it as one .safetensors file.

    Shows a progress bar (the epoch's mean loss and codes used so far), then a short
    summary.

    Ctrl-C finishes the step in flight, saves a checkpoint and exits with code 130;
    `--resume` continues from it. A NaN or infinite loss stops with an error naming the
    step and leaves the last checkpoint untouched.

    Under `torchrun --nproc_per_node N -m discretae.cli fit ...` it trains on N
    processes with DistributedDataParallel; `--batch-size` is the global batch, and
    only rank 0 writes files and shows progress.

    **Examples**

      discretae fit digits --out digits.safetensors

      discretae fit fashion-mnist --model gumbel --codes 10 --objectives none

      discretae fit images/ --model vq --codes 64 --out vq.safetensors

      discretae fit fashion-mnist --model binary --bits 16 --clusters 10

      discretae fit fashion-mnist --ensemble 3 --out steady.safetensors

      discretae fit fashion-mnist --checkpoint-every 500 --out model.safetensors

      discretae fit fashion-mnist --resume model.ckpt.safetensors --out model.safetensors
    """
    from discretae.commands import env_rank
    from discretae.commands import fit as fit_command

    speaks = env_rank() == 0  # under torchrun only rank 0 writes and prints
    interrupted = partial(_interrupted, speaks=speaks, data=data, checkpoint=checkpoint, out=out)
    run(
        fit_command,
        data,
        **_fit_options(ctx),
        quiet=quiet or not speaks,
        json=json and speaks,
        table=_table,
        bar="fit",
        interrupted=interrupted,
    )


def _fit_options(ctx: typer.Context) -> dict:
    """The library's keyword options from the command line. Settings not typed there are
    None, so the library takes its defaults, or a resumed checkpoint's."""
    from discretae.commands import FIT_DEFAULTS

    given = {k: v.value if isinstance(v, Enum) else v for k, v in ctx.params.items()}
    options = {k: given[k] if _typed(ctx, k) else None for k in FIT_DEFAULTS}
    options.update({k: given[k] for k in PASSED_AS_GIVEN})
    options["labels"] = str(given["labels"]) if given["labels"] is not None else None
    return options


def _typed(ctx: typer.Context, name: str) -> bool:
    """Whether the option was given on the command line (not left at its default)."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name != "DEFAULT"


def _interrupted(e, *, speaks: bool, data: str, checkpoint: Path | None, out: Path) -> str | None:
    """What to say on Ctrl-C or SIGTERM: where the checkpoint is and how to resume."""
    from discretae.commands import default_checkpoint

    if not speaks:
        return None
    if not e.checkpointed:
        return f"{e}; no checkpoint was written"
    ckpt = checkpoint or default_checkpoint(out)
    return (
        f"{e}; saved a checkpoint to {str(ckpt)!r}. Resume with: discretae fit {data} "
        f"--resume {ckpt} --out {out}"
    )


def _model_row(result: dict) -> str:
    """The kind and latent; a grid's size, codes and levels ("rvq, grid latent 16x12,
    256 codes, 4 levels")."""
    row = f"{result['model_type']}, {result['latent']} latent"
    if result.get("grid"):
        row += " {}x{}".format(*result["grid"])
        if result.get("n_codes"):
            row += f", {result['n_codes']} codes"
        if result.get("levels"):
            row += f", {result['levels']} levels"
    return row


def _table(result: dict) -> Table:
    rows = [
        ("model", _model_row(result)),
        ("images", result["n_images"]),
        ("working size", _working(result)),
        ("memory (estimate)", _memory(result)),
        ("epochs", f"{result['epochs']}, learning rate {result['lr_schedule']}"),
        *_rollback_row(result),
        ("objectives", ", ".join(["reconstruction", *result["objectives"]])),
        *augment_row(result),
        *mirror_row(result),
        ("final loss", result["final_loss"]),
        ("codes used (last epoch)", _used(result)),
        ("perplexity", result["perplexity"]),
        ("fit seconds", f"{result['fit_seconds']:.1f}"),
        *_prior_row(result),
        *ensemble_row(result),
        *heads_row(result),
        *recluster_row(result),
        ("device", result["device"]),
    ]
    if result.get("clustering"):
        c = result["clustering"]
        rows.append(("NMI / ACC vs labels", f"{c['nmi']:.3f} / {c['acc']:.3f}"))
    rows.append(("saved to", result["model"]))
    return rows_table("fit", rows)


def _rollback_row(result: dict) -> list[tuple[str, str]]:
    """Epochs the spike guard undid: the loss jumped, so they ran again at half the rate."""
    undone = result.get("rolled_back")
    if not undone:
        return []
    epochs = ", ".join(map(str, undone))
    return [("loss spikes undone", f"epoch {epochs}: run again at half the learning rate")]


def _prior_row(result: dict) -> list[tuple[str, str]]:
    choice = result.get("prior")
    if not choice:
        return []
    held = choice.get("held_out_bits_per_image")
    if not held:
        return [("code prior", choice["kind"])]
    scores = ", ".join(f"{k} {v / 8:.1f}" for k, v in held.items())
    return [("code prior", f"{choice['kind']} (bytes/image on held-out images: {scores})")]


def _used(result: dict) -> str:
    used = result["codes_used"]
    if used is None or result["n_codes"] is None:
        return str(used)
    levels = result.get("levels")
    if levels and levels > 1:  # rvq counts tuples, one code of n_codes per level
        return f"{used} of {result['n_codes']}^{levels} ({levels}-level tuples)"
    return f"{used} of {result['n_codes']}"


def _working(result: dict) -> str:
    size = result.get("working_size")
    if not size:
        return "flat vectors"
    return f"{size[0]}x{size[1]}, {result['resize']} over {result['background']}"


def _memory(result: dict) -> str:
    budget = result.get("memory_budget_mb")
    allowed = f" of {budget} MB allowed" if budget is not None else ""
    return f"{result['memory_estimate_mb']} MB{allowed}, batch {result['batch_size']}"
