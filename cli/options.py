"""Option types and help texts shared by the command modules.

Annotated aliases keep each command's signature short, and the enums give Typer the
choices a parser refuses (exit 2) before any work starts.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

DATA_HELP = (
    "Images: a folder (subfolders are labels), one image file, a .npy array, an IDX "
    "file or folder, 'digits', or 'fashion-mnist[:train|:test]'."
)


class ModelKind(str, Enum):
    """What `discretae fit` trains."""

    vq = "vq"
    gumbel = "gumbel"
    binary = "binary"
    rvq = "rvq"


class DemoModelKind(str, Enum):
    """What `discretae demo` compares with k-means (no rvq: it has no clusters)."""

    vq = "vq"
    gumbel = "gumbel"
    binary = "binary"


class LrSchedule(str, Enum):
    constant = "constant"
    cosine = "cosine"
    hold_cosine = "hold-cosine"


class ResizeMode(str, Enum):
    """How `discretae fit` brings images to the working size (data.framing.RESIZE_MODES)."""

    pad = "pad"
    crop = "crop"
    stretch = "stretch"


class DecoderKind(str, Enum):
    """The conv decoder (models.autoencoder.DECODERS, or auto)."""

    auto = "auto"
    full = "full"
    light = "light"


class PriorKind(str, Enum):
    """The archive's code prior (compression.fitting.PRIOR_KINDS)."""

    auto = "auto"
    context = "context"
    learned = "learned"


class Precision(str, Enum):
    """What the networks train in (core.devices.PRECISIONS)."""

    auto = "auto"
    float32 = "float32"
    bfloat16 = "bfloat16"


class Latent(str, Enum):
    global_ = "global"
    grid = "grid"


# Options every command takes.
Quiet = Annotated[
    bool, typer.Option("--quiet", "-q", help="Print nothing but errors (and --json output).")
]
Json = Annotated[
    bool, typer.Option("--json", help="Print the result as JSON on stdout (no tables, no bars).")
]

# Options several commands take.
Data = Annotated[str, typer.Argument(help=DATA_HELP, show_default=False)]
Device = Annotated[str, typer.Option("--device", help="Where to run: auto, cpu, cuda or cuda:N.")]
BatchSize = Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Images per batch.")]
Strict = Annotated[
    bool,
    typer.Option(
        "--strict", help="Fail on the first unreadable image instead of skipping it with a warning."
    ),
]


def existing_file(*flags: str, help: str) -> typer.models.OptionInfo:
    """An option that names an existing file, not a folder (a model, saved codes)."""
    return typer.Option(*flags, exists=True, dir_okay=False, help=help)


ModelPath = Annotated[
    Path, existing_file("--model", "-m", help="A model file written by `discretae fit`.")
]
WithNames = Annotated[
    Path | None,
    typer.Option("--with-names", help="Also write each image's file name, one per line."),
]


def input_file(help: str) -> typer.models.ArgumentInfo:
    """An existing file named on the command line (codes, an archive)."""
    return typer.Argument(exists=True, dir_okay=False, help=help, show_default=False)


def output(help: str) -> typer.models.OptionInfo:
    """``--out``/``-o``: where a command writes (a file, a folder of PNGs, a montage)."""
    return typer.Option("--out", "-o", help=help)


# compress: the two refinements
MaxError = Annotated[
    int | None,
    typer.Option(
        "--max-error",
        "-e",
        min=0,
        max=127,
        help="Add a refinement: no pixel value off by more than this (0: lossless). "
        "Smaller values cost more bytes; without it the archive holds the codes alone.",
    ),
]
Step = Annotated[
    int | None,
    typer.Option(
        "--step",
        "-s",
        min=1,
        max=255,
        help="Add a refinement for a quality rather than a bound: the residual in 4x4 "
        "transform blocks, quantized with this step (smaller: finer, more bytes). "
        "Instead of --max-error.",
    ),
]
