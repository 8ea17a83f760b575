"""`discretae decode`: codes back to images (a PNG per row, or one montage)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from discretae.cli._output import rows_table
from discretae.cli.options import BatchSize, Device, Json, ModelPath, Quiet, input_file, output
from discretae.cli.runner import given_options, run


def decode(
    ctx: typer.Context,
    codes: Annotated[Path, input_file("Codes .npy from `discretae encode`.")],
    model: ModelPath,
    out: Annotated[Path, output("A folder (one PNG per row) or a .png file (one montage).")] = Path(
        "recon"
    ),
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
    from discretae.commands import decode as decode_command

    run(decode_command, **given_options(ctx), table=_table)


def _table(result: dict) -> Table:
    rows = [
        ("wrote", result["kind"]),
        ("images", f"{result['n_images']} of {result['n_rows']} rows"),
        ("image shape", tuple(result["image_shape"])),
        ("saved to", result["out"]),
    ]
    return rows_table("decode", rows)
