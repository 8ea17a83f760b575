"""What a command prints on stdout: its result as JSON, or a table of it."""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Sequence
from typing import Any

from rich.console import Console, RenderableType
from rich.table import Table

from discretae.cli._errors import echo

Rows = Sequence[tuple[str, Any]]


def stdout() -> Console:
    """Console for tables. Created per call so CliRunner's captured streams are honoured."""
    return Console(highlight=False)


def fmt(value: Any, digits: int = 4) -> str:
    """A table cell: floats (numpy's too) rounded, missing values as a dash."""
    if value is None:
        return "-"
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        return f"{value:.{digits}f}" if math.isfinite(value) else "-"
    return str(value)


def rows_table(title: str, rows: Rows) -> Table:
    """A two-column table of ``(what, value)`` rows; values go through :func:`fmt`."""
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value", overflow="fold")  # long paths wrap, never get cut
    for name, value in rows:
        table.add_row(name, fmt(value))
    return table


def print_table(renderable: RenderableType) -> None:
    stdout().print(renderable)


def print_json(result: dict) -> None:
    from discretae.core.jsonable import jsonable  # numpy: only when there is JSON to print

    echo(json.dumps(jsonable(result), indent=2))


def refinement_row(result: dict) -> tuple[str, Any]:
    """The refinement of a compress or decompress result: a bound, a step, or none."""
    if result.get("step") is not None:
        return ("refinement", f"transform residual, step {result['step']}")
    if result["max_error"] is not None:
        return ("max error", result["max_error"])
    return ("max error", "codes only")
