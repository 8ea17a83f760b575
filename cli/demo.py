"""`discretae demo`: fit on digits and compare the clusters with k-means, in one run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Group, RenderableType
from rich.table import Table

from discretae.cli._output import fmt
from discretae.cli.options import DemoModelKind, Device, Json, Quiet
from discretae.cli.runner import given_options, run


def demo(
    ctx: typer.Context,
    model: Annotated[
        DemoModelKind, typer.Option("--model", "-m", help="vq, gumbel (one-hot) or binary.")
    ] = DemoModelKind.gumbel,
    epochs: Annotated[
        int | None,
        typer.Option(
            "--epochs",
            "-e",
            min=1,
            help="Passes over digits (default: 53 for gumbel, 30 for vq and binary).",
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (model and k-means).")] = 0,
    out_dir: Annotated[
        Path | None,
        typer.Option("--out-dir", "-o", help="Also write the model, codes, report and figures."),
    ] = None,
    device: Device = "auto",
    quiet: Quiet = False,
    json: Json = False,
) -> None:
    """Fit on scikit-learn's 8x8 digits, encode, evaluate, and compare with k-means.

    Prints NMI, ACC, purity and ARI of the model's clusters next to scikit-learn
    KMeans(10) on the same raw pixels, both measured in this run.

    **Examples**

      discretae demo

      discretae demo --model vq --epochs 40 --out-dir demo/
    """
    from discretae.commands import demo as demo_command

    run(demo_command, **given_options(ctx), table=_comparison, bar="fit")


def _comparison(result: dict) -> RenderableType:
    """Our clusters and k-means', side by side; then where the outputs went, if anywhere."""
    ours, km = result["discretae"], result["kmeans"]
    table = Table(
        title=f"digits ({result['n_images']} images, 10 classes)",
        title_justify="left",
        caption=(
            f"{ours['method']}: 10 codes, {result['epochs']} epochs; k-means: scikit-learn "
            "KMeans(10, n_init=10) on raw pixels. Both measured in this run."
        ),
        caption_justify="left",
    )
    table.add_column("method")
    for name in ("NMI", "ACC", "purity", "ARI", "clusters", "seconds"):
        table.add_column(name, justify="right")
    for name, row in ((ours["method"], ours), (km["method"], km)):
        table.add_row(
            name,
            *(fmt(row[k], 3) for k in ("nmi", "acc", "purity", "ari")),
            str(row["n_clusters_used"]),
            fmt(row["seconds"], 1),
        )
    if not result.get("out_dir"):
        return table
    return Group(table, f"wrote model, codes, report and figures to {result['out_dir']}")
