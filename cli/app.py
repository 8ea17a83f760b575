"""The ``discretae`` Typer app: registers one module per command.

Errors are handled in one place, :class:`~discretae.cli._common.DiscretaeGroup`: a user
error prints one ``error: ...`` line on stderr and exits 1 (usage errors exit 2,
Ctrl-C exits 130), in a real process and under Typer's ``CliRunner`` alike.
"""

from __future__ import annotations

from typing import Annotated

import typer

from discretae import __version__

from ._common import DiscretaeGroup
from .compress import compress
from .decode import decode
from .decompress import decompress
from .demo import demo
from .encode import encode
from .evaluate import evaluate
from .fit import fit
from .merge import merge

HELP = """Turn images into discrete codes: fit, encode, decode and evaluate discrete autoencoders.

**Examples**

  discretae demo

  discretae fit digits --out model.safetensors

  discretae evaluate digits -m model.safetensors --report report.json
"""

app = typer.Typer(
    name="discretae",
    cls=DiscretaeGroup,
    help=HELP,
    rich_markup_mode="markdown",  # paragraphs rewrap; docstrings stay within 100 columns
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
for command in (fit, encode, decode, evaluate, demo, merge, compress, decompress):
    app.command(name=command.__name__)(command)


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
    """Console-script entry point. Failures become one ``error:`` line (see DiscretaeGroup)."""
    app(prog_name="discretae")
