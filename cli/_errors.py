"""The one place where failures become one ``error: ...`` line on stderr and an exit code.

Usage errors exit 2, user errors (:class:`DiscretaeError`, a missing or unwritable file)
exit 1, Ctrl-C exits 130, in a real process and under Typer's ``CliRunner`` alike.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import typer
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

DEBUG_ENV = "DISCRETAE_DEBUG"  # set to 1 to see the traceback of an unexpected error


def error_line(message: str) -> str:
    """Collapse a message onto one line, so a user always sees exactly one ``error:`` line."""
    return " ".join(str(message).split())


def echo_error(message: str) -> None:
    # Plain echo, not Rich: Rich would wrap a long message across several lines.
    echo(f"error: {error_line(message)}", err=True)


def echo_warning(message: str) -> None:
    echo(f"warning: {error_line(message)}", err=True)


def os_error_message(e: OSError) -> str:
    """``No such file or directory: 'x.npy'``: what went wrong, and with which path."""
    what = e.strerror or str(e)
    if e.filename is not None:
        return f"{what}: {str(e.filename)!r}"
    return what


class DiscretaeGroup(TyperGroup):
    """Replaces Click's ``main`` so the same handling applies under ``CliRunner`` and in a
    real process (see the module docstring for the exit codes)."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        args = sys.argv[1:] if args is None else list(args)
        extra.pop("windows_expand_args", None)
        try:
            with self.make_context(prog_name or "discretae", args, **extra) as ctx:
                self.invoke(ctx)
            code = 0
        except BaseException as e:  # noqa: BLE001 - each kind gets its exit code below
            code = exit_code(e)
        if standalone_mode:
            sys.exit(code)
        return code


def exit_code(e: BaseException) -> int:
    """Report ``e`` as one line on stderr (or not at all) and return the exit code."""
    if isinstance(e, typer.Exit):
        return e.exit_code
    if isinstance(e, _NoArgsIsHelpError):
        # Rich help is printed while the error is built and leaves an empty message.
        if e.format_message().strip():
            echo(e.format_message())
        return e.exit_code
    if isinstance(e, _cx.ClickException):
        message = e.format_message()
        ctx = getattr(e, "ctx", None)
        if ctx is not None:
            message += f" (see '{ctx.command_path} --help')"
        echo_error(message)
        return e.exit_code
    if isinstance(e, KeyboardInterrupt | typer.Abort):
        echo_error("interrupted")
        return 130
    if isinstance(e, BrokenPipeError):  # `discretae ... | head`: stop quietly, like Click
        silence_stdout()
        return 1
    if isinstance(e, SystemExit | GeneratorExit):
        raise e
    return _user_error_code(e)


def _user_error_code(e: BaseException) -> int:
    if isinstance(e, DiscretaeError):
        echo_error(str(e))
    elif isinstance(e, OSError):  # FileNotFoundError, PermissionError, a full disk, ...
        echo_error(os_error_message(e))
    elif os.environ.get(DEBUG_ENV) or not isinstance(e, Exception):
        raise e
    else:
        echo_error(
            f"unexpected {type(e).__name__}: {e} "
            f"(set {DEBUG_ENV}=1 to see the traceback, and please report it)"
        )
    return 1


def silence_stdout() -> None:
    """Point stdout at /dev/null, so what is still buffered has somewhere to go at exit
    (the reader of the pipe is gone; flushing into it would fail again)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # no real stdout (CliRunner): nothing to do
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)
