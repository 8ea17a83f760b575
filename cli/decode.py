"""`discretae decode`: codes back to images (a PNG per row, or one montage)."""

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


def decode(
    codes: Annotated[
        Path,
        typer.Argument(
            exists=True,
            dir_okay=False,
            help="Codes .npy from `discretae encode`.",
            show_default=False,
        ),
    ],
    model: ModelPath,
    out: Annotated[
        Path,
        typer.Option(
            "--out", "-o", help="A folder (one PNG per row) or a .png file (one montage)."
        ),
    ] = Path("recon"),
    batch_size: BatchSize = 256,
    device: Device = "auto",
    quiet: Quiet = False,
    json: Json = False,
) -> None:
    """Decode codes back into images.

    A folder output gets one PNG per row, named by row number (000000.png, ...);
    an output ending in .png gets one montage of the first 400 rows.

    **Examples**

      discretae decode codes.npy --model model.safetensors --out recon/

      discretae decode codes.npy -m model.safetensors --out grid.png
    """
    from discretae.commands import decode_codes

    with step_progress(not (quiet or json)) as progress:
        result = decode_codes(
            codes, model=model, out=out, batch_size=batch_size, device=device, callback=progress
        )
    if json:
        print_json(result)
    elif not quiet:
        print_table(
            "decode",
            [
                ("wrote", result["kind"]),
                ("images", f"{result['n_images']} of {result['n_rows']} rows"),
                ("image shape", tuple(result["image_shape"])),
                ("saved to", result["out"]),
            ],
        )
