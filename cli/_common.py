"""Shared CLI plumbing: one-line errors, Rich consoles, --quiet/--json output, progress bars.

Every command module imports its options and output helpers from here, so the commands
stay thin wrappers around :mod:`discretae.commands`.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from typer.core import TyperGroup

from discretae.core.errors import DiscretaeError

try:  # Typer >= 0.2x vendors its own copy of Click
    from typer._click import exceptions as _cx
    from typer._click.utils import echo
except ImportError:  # older Typer runs on Click itself
    from click import exceptions as _cx
    from click.utils import echo

UsageError = _cx.UsageError
# Click >= 8.2 raises this for a bare `discretae`; older versions print help themselves.
_NoArgsIsHelpError = getattr(_cx, "NoArgsIsHelpError", ())

# Options every command takes. Annotated aliases keep each command's signature short.
Quiet = Annotated[
    bool, typer.Option("--quiet", "-q", help="Print nothing but errors (and --json output).")
]
Json = Annotated[
    bool, typer.Option("--json", help="Print the result as JSON on stdout (no tables, no bars).")
]
Device = Annotated[str, typer.Option("--device", help="Where to run: auto, cpu, cuda or cuda:N.")]
BatchSize = Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Images per batch.")]
Strict = Annotated[
    bool,
    typer.Option(
        "--strict", help="Fail on the first unreadable image instead of skipping it with a warning."
    ),
]
ModelPath = Annotated[
    Path,
    typer.Option(
        "--model",
        "-m",
        exists=True,
        dir_okay=False,
        help="A model file written by `discretae fit`.",
    ),
]

_DEBUG_ENV = "DISCRETAE_DEBUG"  # set to 1 to see the traceback of an unexpected error


def stdout() -> Console:
    """Console for tables. Created per call so CliRunner's captured streams are honoured."""
    return Console(highlight=False)


def stderr() -> Console:
    """Console for progress bars (never mixed into --json stdout)."""
    return Console(stderr=True, highlight=False)


def error_line(message: str) -> str:
    """Collapse a message onto one line, so a user always sees exactly one ``error:`` line."""
    return " ".join(str(message).split())


def _os_error_message(e: OSError) -> str:
    what = e.strerror or str(e)
    if e.filename is not None:
        return f"{what}: {str(e.filename)!r}"
    return what


def echo_error(message: str) -> None:
    # Plain echo, not Rich: Rich would wrap a long message across several lines.
    echo(f"error: {error_line(message)}", err=True)


class DiscretaeGroup(TyperGroup):
    """The one place where failures become one ``error: ...`` line on stderr.

    It replaces Click's ``main`` so the same handling applies under ``CliRunner`` and in a
    real process: usage errors exit 2, user errors exit 1, Ctrl-C exits 130.
    """

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        args = sys.argv[1:] if args is None else list(args)
        prog_name = prog_name or "discretae"
        extra.pop("windows_expand_args", None)
        code = 0
        try:
            with self.make_context(prog_name, args, **extra) as ctx:
                self.invoke(ctx)
        except typer.Exit as e:
            code = e.exit_code
        except _NoArgsIsHelpError as e:
            # Rich help is printed while the error is built and leaves an empty message.
            if e.format_message().strip():
                echo(e.format_message())
            code = e.exit_code
        except _cx.ClickException as e:
            message = e.format_message()
            ctx = getattr(e, "ctx", None)
            if ctx is not None:
                message += f" (see '{ctx.command_path} --help')"
            echo_error(message)
            code = e.exit_code
        except (KeyboardInterrupt, typer.Abort):
            echo_error("interrupted")
            code = 130
        except BrokenPipeError:
            # `discretae ... | head`: stop quietly, like Click does.
            sys.stdout = None  # type: ignore[assignment]
            code = 1
        except DiscretaeError as e:
            echo_error(str(e))
            code = 1
        except OSError as e:
            # FileNotFoundError, PermissionError, IsADirectoryError, a full disk, ...
            echo_error(_os_error_message(e))
            code = 1
        except Exception as e:
            if os.environ.get(_DEBUG_ENV):
                raise
            echo_error(
                f"unexpected {type(e).__name__}: {e} "
                f"(set {_DEBUG_ENV}=1 to see the traceback, and please report it)"
            )
            code = 1
        if standalone_mode:
            sys.exit(code)
        return code


def jsonable(obj: Any) -> Any:
    """Turn numpy scalars/arrays, paths and NaN into plain JSON values."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return jsonable(obj.item())
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def print_json(result: dict) -> None:
    echo(json.dumps(jsonable(result), indent=2))


def warner(quiet: bool) -> Callable[[str], None]:
    """The ``warn`` callback handed to the library: one ``warning:`` line on stderr."""

    def warn(message: str) -> None:
        if not quiet:
            echo(f"warning: {error_line(message)}", err=True)

    return warn


def fmt(value: Any, digits: int = 4) -> str:
    """A table cell: floats rounded, missing values as a dash."""
    if value is None:
        return "-"
    if isinstance(value, float | np.floating):
        return "-" if not math.isfinite(value) else f"{value:.{digits}f}"
    return str(value)


def print_table(title: str, rows: Sequence[tuple[str, Any]]) -> None:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value", overflow="fold")  # long paths wrap, never get cut
    for name, value in rows:
        table.add_row(name, fmt(value))
    stdout().print(table)


class _LazyProgress:
    """A Rich progress bar that appears on the first event, so a run that fails during
    validation prints nothing but its one error line."""

    def __init__(self, *columns, transient: bool, **fields) -> None:
        self.bar = Progress(*columns, console=stderr(), transient=transient)
        self.task = self.bar.add_task("", total=None, **fields)
        self.started = False

    def update(self, **kwargs) -> None:
        if not self.started:
            self.bar.start()
            self.started = True
        self.bar.update(self.task, **kwargs)

    def stop(self) -> None:
        if self.started:
            self.bar.stop()


@contextmanager
def step_progress(enabled: bool, what: str = "images") -> Iterator[Callable[[dict], None]]:
    """A progress bar over ``{"stage", "done", "total"}`` events (encode, decode, evaluate)."""
    if not enabled:
        yield lambda event: None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(what),
        TimeElapsedColumn(),
    )
    bar = _LazyProgress(*columns, transient=True)
    try:
        yield lambda event: bar.update(
            total=event.get("total"), completed=event["done"], description=event.get("stage", "")
        )
    finally:
        bar.stop()


@contextmanager
def fit_progress(enabled: bool) -> Iterator[Callable[[dict], None]]:
    """A progress bar driven by the estimator's per-step callback events: the epoch's
    mean loss so far (the last batch of an epoch can be a handful of images, whose own
    loss says little) and the distinct codes the epoch has used so far."""
    if not enabled:
        yield lambda event: None
        return
    columns = (
        TextColumn("epoch {task.fields[epoch]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("codes used {task.fields[usage]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    bar = _LazyProgress(*columns, transient=False, epoch="-", loss="-", usage="-")
    running = {"epoch": None, "sum": 0.0, "n": 0}  # this epoch's losses seen so far

    def update(event: dict) -> None:
        epochs, steps = int(event["epochs"]), int(event["steps_per_epoch"])
        if running["epoch"] != event["epoch"]:
            running.update(epoch=event["epoch"], sum=0.0, n=0)
        running["sum"] += float(event["loss"])
        running["n"] += 1
        bar.update(
            total=epochs * steps,
            completed=_fit_steps_done(event),
            epoch=f"{event['epoch']}/{epochs}",
            loss=fmt(running["sum"] / running["n"]),
            usage=_usage_text(event.get("usage")),
        )

    try:
        yield update
    finally:
        bar.stop()


def _fit_steps_done(event: dict) -> int:
    """Steps finished so far; the estimator counts epochs and steps from 1."""
    return (int(event["epoch"]) - 1) * int(event["steps_per_epoch"]) + int(event["step"])


def _usage_text(usage: Any) -> str:
    """Distinct codes of the epoch so far (an int), as the estimator reports it."""
    return "-" if usage is None else str(usage)
