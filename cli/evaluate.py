"""`discretae evaluate`: clustering, code usage, reconstruction and bits per image."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from discretae.cli._errors import UsageError
from discretae.cli._output import rows_table
from discretae.cli.options import DATA_HELP, BatchSize, Device, Json, Quiet, Strict, existing_file
from discretae.cli.runner import given_options, run

# evaluate's own options, named here so that its signature reads as a list
DataOrNone = Annotated[
    str | None, typer.Argument(help=DATA_HELP + " Not with --codes.", show_default=False)
]
ModelOrNone = Annotated[
    Path | None,
    typer.Option(
        "--model", "-m", exists=True, dir_okay=False, help="A model file from `discretae fit`."
    ),
]
SavedCodes = Annotated[
    Path | None,
    existing_file("--codes", help="Evaluate saved codes or cluster ids (.npy) without a model."),
]
Labels = Annotated[
    Path | None,
    typer.Option("--labels", help="True labels .npy (default: DATA's own labels, if any)."),
]
Report = Annotated[Path | None, typer.Option("--report", "-r", help="Write the JSON report here.")]
Figures = Annotated[
    Path | None, typer.Option("--figures", "-f", help="Write PNG figures into this folder.")
]
Discriminator = Annotated[
    bool,
    typer.Option(
        "--discriminator",
        help="Also train a small classifier to tell (image, own code) from (image, "
        "another image's code) and report its held-out accuracy and AUC: a code "
        "score that needs no labels (0.5 is chance).",
    ),
]


def evaluate(
    ctx: typer.Context,
    data: DataOrNone = None,
    model: ModelOrNone = None,
    codes: SavedCodes = None,
    labels: Labels = None,
    report: Report = None,
    figures: Figures = None,
    batch_size: BatchSize = 256,
    device: Device = "auto",
    strict: Strict = False,
    discriminator: Discriminator = False,
    quiet: Quiet = False,
    json: Json = False,
) -> None:
    """Measure how good a model's codes are on DATA.

    Reports purity, NMI, ACC (Hungarian matching) and ARI against the labels, the number
    of clusters used, code usage and perplexity, reconstruction MSE and PSNR, and bits per
    image (raw, and from a real .dae archive when the model holds a code prior;
    otherwise an estimated entropy, labelled as such). Figures: a montage per cluster, the
    cluster-vs-label heatmap, the code usage histogram, originals next to
    reconstructions. With --codes, evaluates saved codes alone (clustering and usage).

    **Examples**

      discretae evaluate digits -m model.safetensors --report report.json

      discretae evaluate images/ -m model.safetensors --figures figs/

      discretae evaluate --codes clusters.npy --labels labels.npy --json

      discretae evaluate unlabelled/ -m model.safetensors --discriminator
    """
    from discretae.commands import evaluate as evaluate_command

    _check_inputs(data, model, codes, discriminator)
    run(evaluate_command, **given_options(ctx), table=partial(_table, report_path=report))


def _check_inputs(data: str | None, model, codes, discriminator: bool) -> None:
    """A model and DATA, or saved codes: anything else is a usage error (exit 2)."""
    if codes is not None and (data is not None or model is not None):
        raise UsageError("--codes evaluates saved codes alone: drop DATA and --model")
    if codes is None and (data is None or model is None):
        raise UsageError("give DATA and --model, or --codes (with --labels)")
    if discriminator and codes is not None:
        raise UsageError("--discriminator needs DATA and --model, not --codes")


def _table(report: dict, report_path: Path | None) -> Table:
    rows = summary_rows(report)
    if report_path is not None:
        rows.append(("report", str(report_path)))
    return rows_table("evaluate", rows)


def summary_rows(report: dict) -> list[tuple[str, object]]:
    """The table rows of a report (see ``evaluation.report``); absent sections are left out."""
    rows: list[tuple[str, object]] = [("images", (report.get("data") or {}).get("n_images"))]
    clustering = report.get("clustering") or {}
    if "n_classes" in clustering:  # purity's floor is the largest class's share
        rows.append(("classes in the labels", clustering["n_classes"]))
    for key, name in (("purity", "purity"), ("nmi", "NMI"), ("acc", "ACC"), ("ari", "ARI")):
        if key in clustering:
            rows.append((name, clustering[key]))
    if "n_clusters_used" in clustering:
        rows.append(("clusters used", clustering["n_clusters_used"]))
    codes = report.get("codes") or {}
    if "n_codes" in codes:
        rows.append(("codes used", f"{codes['used']} of {codes['n_codes']}"))
    elif "n_bits" in codes:
        rows.append(("distinct bit patterns", f"{codes['used']} of 2^{codes['n_bits']}"))
    if "perplexity" in codes:
        rows.append(("code perplexity", codes["perplexity"]))
    recon = report.get("reconstruction") or {}
    if "mse" in recon:
        rows += [("reconstruction MSE", recon["mse"]), ("PSNR (dB)", recon["psnr"])]
    bits = report.get("bits") or {}
    if "raw_bits_per_image" in bits:
        rows.append(("bits/image, raw codes", bits["raw_bits_per_image"]))
    if "archive_bits_per_image" in bits:
        rows.append(("bits/image, real .dae archive", bits["archive_bits_per_image"]))
    if "empirical_entropy_bits_per_image" in bits:
        rows.append(("bits/image, entropy (estimated)", bits["empirical_entropy_bits_per_image"]))
    disc = report.get("discriminator") or {}
    if "auc" in disc:
        rows.append(("code discriminator AUC / acc", f"{disc['auc']:.3f} / {disc['accuracy']:.3f}"))
    if report.get("figures"):
        rows.append(("figures", ", ".join(report["figures"])))
    return rows
