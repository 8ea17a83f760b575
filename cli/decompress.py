"""`discretae decompress`: a .dae archive back to images."""

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
    print_json,
    print_table,
    step_progress,
)


def decompress(
    archive: Annotated[
        Path,
        typer.Argument(
            exists=True,
            dir_okay=False,
            help="An archive from `discretae compress`.",
            show_default=False,
        ),
    ],
    model: ModelPath,
    out: Annotated[
        Path,
        typer.Option(
            "--out", "-o", help="A folder (one PNG per image) or a .png file (one montage)."
        ),
    ] = Path("recon"),
    codes: Annotated[
        Path | None,
        typer.Option("--codes", help="Also write the decoded codes (.npy)."),
    ] = None,
    batch_size: BatchSize = 256,
    device: Device = "auto",
    quiet: Quiet = False,
    json: Json = False,
) -> None:
    """Decompress an archive into images, with the model that compressed it.

    A folder output gets one PNG per image, named after the stored file names (or
    000000.png, ...); an output ending in .png gets one montage of the first 400 images.

    **Examples**

      discretae decompress images.dae --model model.safetensors --out recon/

      discretae decompress test.dae -m rvq.safetensors --out grid.png
    """
    from discretae.compression.codec import decompress as run

    with step_progress(not (quiet or json)) as progress:
        result = run(
            archive,
            model=model,
            out=out,
            codes_out=codes,
            batch_size=batch_size,
            device=device,
            callback=progress,
        )
    if json:
        print_json(result)
    elif not quiet:
        rows = [
            ("wrote", result["kind"]),
            ("images", result["n_images"]),
            ("image shape", tuple(result["image_shape"])),
            ("levels", result["levels"]),
            ("saved to", result["out"]),
        ]
        if result["codes"]:
            rows.append(("codes", result["codes"]))
        print_table("decompress", rows)
