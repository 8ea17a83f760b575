"""The one runner every command goes through.

A command module parses its options with Typer and hands the library function to
:func:`run`, which calls it with a progress callback (and a warnings callback, when the
function takes one), then prints the result: JSON with ``--json``, else the command's
table unless ``--quiet``. Errors raised on the way reach
:class:`~discretae.cli._errors.DiscretaeGroup`, which prints them as one line and exits.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from enum import Enum
from typing import Any

import typer
from rich.console import RenderableType

from discretae.cli._errors import echo_error, echo_warning
from discretae.cli._output import print_json, print_table
from discretae.cli._progress import BarKind, progress_bar

# a command's table: the result dict -> what to print (see _output.rows_table)
Formatter = Callable[[dict], RenderableType]
# what to say when a fit is interrupted (None: say nothing, e.g. on a rank other than 0)
InterruptMessage = Callable[[KeyboardInterrupt], str | None]


def run(
    command: Callable[..., dict],
    *args: Any,
    quiet: bool,
    json: bool,
    table: Formatter,
    bar: BarKind = "images",
    interrupted: InterruptMessage | None = None,
    **options: Any,
) -> None:
    """Run ``command(*args, **options)`` the way every ``discretae`` command runs.

    - ``bar``: a progress bar on stderr, unless ``quiet`` or ``json``;
    - warnings as ``warning: ...`` lines on stderr, unless ``quiet``;
    - the result as JSON on stdout with ``json``, else ``table(result)`` unless ``quiet``;
    - ``interrupted``: a training run stopped by a signal (``TrainingInterrupted``) ends
      with this message and exit code 128 + the signal (130 for Ctrl-C); without it,
      Ctrl-C is reported like any other (``error: interrupted``, 130).
    """
    if _takes(command, "warn"):
        options["warn"] = _warner(quiet)
    try:
        with progress_bar(bar, enabled=not (quiet or json)) as callback:
            result = command(*args, callback=callback, **options)
    except KeyboardInterrupt as e:
        if interrupted is None or not isinstance(e, _training_interrupted()):
            raise
        message = interrupted(e)
        if message:
            echo_error(message)
        raise typer.Exit(128 + e.signum) from None
    if json:
        print_json(result)
    elif not quiet:
        print_table(table(result))


def given_options(ctx: typer.Context) -> dict[str, Any]:
    """The command line's parameters, named like the library's keyword options (each
    CLI flag is named like the option it sets), enum choices by their value."""
    return {k: v.value if isinstance(v, Enum) else v for k, v in ctx.params.items()}


def _takes(command: Callable, name: str) -> bool:
    """Whether ``command`` has a keyword parameter ``name`` (or takes ``**kwargs``)."""
    params = inspect.signature(command).parameters.values()
    return any(p.name == name or p.kind is p.VAR_KEYWORD for p in params)


def _warner(quiet: bool) -> Callable[[str], None]:
    """The ``warn`` callback handed to the library: one ``warning:`` line on stderr."""

    def warn(message: str) -> None:
        if not quiet:
            echo_warning(message)

    return warn


def _training_interrupted() -> type:
    # imported only once a run was interrupted: the command has loaded torch by then
    from discretae import TrainingInterrupted

    return TrainingInterrupted
