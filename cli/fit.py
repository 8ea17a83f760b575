"""`discretae fit`: train a discrete autoencoder and save it as one .safetensors file."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from ._common import (
    BatchSize,
    Device,
    Json,
    Quiet,
    Strict,
    fit_progress,
    print_json,
    print_table,
    warner,
)


class ModelKind(str, Enum):
    vq = "vq"
    gumbel = "gumbel"
    binary = "binary"


class Latent(str, Enum):
    global_ = "global"
    grid = "grid"


DATA_HELP = (
    "Images: a folder (subfolders are labels), a .npy array, an IDX file or folder, "
    "'digits', or 'fashion-mnist[:train|:test]'."
)


def fit(
    data: Annotated[str, typer.Argument(help=DATA_HELP, show_default=False)],
    model: Annotated[
        ModelKind, typer.Option("--model", "-m", help="vq, gumbel (one-hot) or binary.")
    ] = ModelKind.gumbel,
    codes: Annotated[
        int, typer.Option("--codes", "-k", min=1, help="Codebook size (vq, gumbel).")
    ] = 10,
    bits: Annotated[int, typer.Option("--bits", min=1, help="Bits per code (binary).")] = 16,
    latent: Annotated[
        Latent, typer.Option("--latent", help="One code per image, or a grid of codes.")
    ] = Latent.global_,
    grid: Annotated[
        str | None, typer.Option("--grid", help="Grid size for --latent grid, e.g. 7x7.")
    ] = None,
    clusters: Annotated[
        int | None,
        typer.Option("--clusters", min=1, help="k-means clusters over binary or grid codes."),
    ] = None,
    epochs: Annotated[
        int, typer.Option("--epochs", "-e", min=1, help="Passes over the data.")
    ] = 30,
    batch_size: BatchSize = 256,
    lr: Annotated[float, typer.Option("--lr", min=0.0, help="Adam learning rate.")] = 1e-3,
    device: Device = "auto",
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
    labels: Annotated[
        Path | None,
        typer.Option(
            "--labels",
            help="Labels (.npy, or CSV for folders) to score the fitted clusters against "
            "(default: DATA's own labels, if any).",
        ),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the model.")] = Path(
        "model.safetensors"
    ),
    strict: Strict = False,
    quiet: Quiet = False,
    json: Json = False,
) -> None:
    """Fit a discrete autoencoder on DATA and save it as one .safetensors file.

    Shows a progress bar (loss, code usage, perplexity), then a short summary.

    **Examples**

      discretae fit digits --epochs 10 --out digits.safetensors

      discretae fit images/ --model vq --codes 64 --out vq.safetensors

      discretae fit fashion-mnist --model binary --bits 16 --clusters 10

      discretae fit data.npy --model vq --latent grid --grid 7x7 --device cuda
    """
    from discretae.commands import fit_model

    with fit_progress(not (quiet or json)) as progress:
        result = fit_model(
            data,
            out=out,
            model=model.value,
            codes=codes,
            bits=bits,
            latent=latent.value,
            grid=grid,
            clusters=clusters,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            device=device,
            seed=seed,
            labels=str(labels) if labels is not None else None,
            strict=strict,
            callback=progress,
            warn=warner(quiet),
        )
    if json:
        print_json(result)
    elif not quiet:
        rows = [
            ("model", f"{result['model_type']}, {result['latent']} latent"),
            ("images", result["n_images"]),
            ("epochs", result["epochs"]),
            ("final loss", result["final_loss"]),
            ("codes used (last epoch)", _used(result)),
            ("perplexity", result["perplexity"]),
            ("fit seconds", f"{result['fit_seconds']:.1f}"),
            ("device", result["device"]),
        ]
        if result.get("clustering"):
            c = result["clustering"]
            rows.append(("NMI / ACC vs labels", f"{c['nmi']:.3f} / {c['acc']:.3f}"))
        rows.append(("saved to", result["model"]))
        print_table("fit", rows)


def _used(result: dict) -> str:
    used = result["codes_used"]
    if used is None or result["n_codes"] is None:
        return str(used)
    return f"{used} of {result['n_codes']}"
