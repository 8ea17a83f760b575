"""The ``discretae`` Typer app: registers one module per command.

Errors are handled in one place, :class:`~discretae.cli._errors.DiscretaeGroup`: a user
error prints one ``error: ...`` line on stderr and exits 1 (usage errors exit 2,
Ctrl-C exits 130), in a real process and under Typer's ``CliRunner`` alike.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from discretae import __version__
from discretae.cli._errors import DiscretaeGroup
from discretae.cli.compress import compress
from discretae.cli.decode import decode
from discretae.cli.decompress import decompress
from discretae.cli.demo import demo
from discretae.cli.doctor import doctor
from discretae.cli.encode import encode
from discretae.cli.evaluate import evaluate
from discretae.cli.fit import fit
from discretae.cli.merge import merge

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
for command in (fit, encode, decode, evaluate, demo, merge, compress, decompress, doctor):
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
    """Console-script entry point. Failures become one ``error:`` line (see DiscretaeGroup).

    The command's work is done, its files closed and renamed into place, when ``app``
    returns; the process then ends without tearing the interpreter down (torch's modules
    and objects), which cost about 0.5 s of every command.
    """
    try:
        app(prog_name="discretae")
    except SystemExit as e:
        code = e.code
    else:
        code = 0
    _exit(code)


def _exit(code) -> None:
    if isinstance(code, str):  # what sys.exit("...") would print
        print(code, file=sys.stderr)
        code = 1
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    for stream in (sys.stdout, sys.stderr):
        if stream is None:  # closed by a caller; nothing to flush
            continue
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said
            pass
    os._exit(0 if code is None else int(code))
