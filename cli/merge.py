"""`discretae merge`: join the outputs of `discretae encode --shard i/n` in original order."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from discretae.cli._output import rows_table
from discretae.cli.options import Json, Quiet, WithNames, output
from discretae.cli.runner import given_options, run


def merge(
    ctx: typer.Context,
    shards: Annotated[
        list[Path],
        typer.Argument(
            help="Shard .npy files from `discretae encode --shard`, in any order.",
            exists=True,
            dir_okay=False,
            show_default=False,
        ),
    ],
    out: Annotated[Path, output("Where to write the merged codes (.npy).")] = Path("codes.npy"),
    with_names: WithNames = None,
    quiet: Quiet = False,
    json: Json = False,
) -> None:
    """Merge encoded shards into one .npy, in the original order of DATA.

    Each shard's `.shard.json` says which rows it holds. The shards must come from the
    same model and data and cover every row exactly once; a missing or doubled slice
    is an error that names the rows.

    **Examples**

      discretae merge codes-0.npy codes-1.npy codes-2.npy codes-3.npy --out codes.npy

      discretae merge codes-*.npy --out codes.npy --with-names names.txt
    """
    from discretae.commands import merge as merge_command

    run(merge_command, **given_options(ctx), table=_table, bar="rows")


def _table(result: dict) -> Table:
    rows = [
        ("merged", f"{len(result['shards'])} shard(s) of {result['kind']}"),
        ("images", result["n_images"]),
        ("shape", tuple(result["shape"])),
        ("dtype", result["dtype"]),
        ("saved to", result["out"]),
    ]
    if result["names"]:
        rows.append(("names", result["names"]))
    return rows_table("merge", rows)
