"""`discretae encode`: images to codes (or cluster ids), saved as .npy."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._common import (
    BatchSize,
    Device,
    Json,
    ModelPath,
    Quiet,
    Strict,
    print_json,
    print_table,
    step_progress,
    warner,
)
from .fit import DATA_HELP


def encode(
    data: Annotated[str, typer.Argument(help=DATA_HELP, show_default=False)],
    model: ModelPath,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Where to write the codes (.npy).")
    ] = Path("codes.npy"),
    clusters: Annotated[
        bool, typer.Option("--clusters", help="Write one cluster id per image instead of codes.")
    ] = False,
    with_names: Annotated[
        Path | None,
        typer.Option("--with-names", help="Also write each image's file name, one per line."),
    ] = None,
    batch_size: BatchSize = 256,
    device: Device = "auto",
    strict: Strict = False,
    quiet: Quiet = False,
    json: Json = False,
) -> None:
    """Encode DATA into discrete codes with a fitted model.

    Codes are stored in the smallest integer dtype that fits (uint8, uint16, int32,
    int64). Images are resized to the model's input size.

    **Examples**

      discretae encode images/ --model model.safetensors --out codes.npy

      discretae encode digits -m model.safetensors --clusters --out clusters.npy

      discretae encode images/ -m model.safetensors --with-names names.txt
    """
    from discretae.commands import encode_data

    with step_progress(not (quiet or json)) as progress:
        result = encode_data(
            data,
            model=model,
            out=out,
            clusters=clusters,
            with_names=with_names,
            batch_size=batch_size,
            device=device,
            strict=strict,
            callback=progress,
            warn=warner(quiet),
        )
    if json:
        print_json(result)
    elif not quiet:
        rows = [
            ("wrote", result["kind"]),
            ("images", result["n_images"]),
            ("shape", tuple(result["shape"])),
            ("dtype", result["dtype"]),
            ("saved to", result["out"]),
        ]
        if result["names"]:
            rows.append(("names", result["names"]))
        print_table("encode", rows)
