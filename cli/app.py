"""The ``discretae`` Typer app: registers one module per command."""

from __future__ import annotations

from typing import Annotated

import typer

from discretae import __version__

app = typer.Typer(
    name="discretae",
    help="Turn images into discrete codes: fit, encode, decode and evaluate discrete autoencoders.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"discretae {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", "-V", callback=_version, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    """Turn images into discrete codes."""


def main() -> None:
    app()
