"""`discretae decompress`: a .dae archive back to images."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from discretae.cli._output import refinement_row as _refinement_row
from discretae.cli._output import rows_table
from discretae.cli.options import BatchSize, Device, Json, ModelPath, Quiet, input_file, output
from discretae.cli.runner import given_options, run


def decompress(
    ctx: typer.Context,
    archive: Annotated[Path, input_file("An archive from `discretae compress`.")],
    model: ModelPath,
    out: Annotated[
        Path, output("A folder (one PNG per image) or a .png file (one montage).")
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
    from discretae.commands import decompress as decompress_command

    options = given_options(ctx)
    options["codes_out"] = options.pop("codes")
    run(decompress_command, **options, table=_table)


def _table(result: dict) -> Table:
    rows = [
        ("wrote", result["kind"]),
        ("images", result["n_images"]),
        ("image shape", tuple(result["image_shape"])),
        ("levels", result["levels"]),
        _refinement_row(result),
        ("saved to", result["out"]),
    ]
    if result["codes"]:
        rows.append(("codes", result["codes"]))
    return rows_table("decompress", rows)
