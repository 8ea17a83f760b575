"""`discretae doctor`: versions, devices, and the nearest-code kernel checked on each device."""

from __future__ import annotations

import functools
from typing import Annotated

import typer
from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from discretae.cli.options import Json, Quiet
from discretae.cli.runner import given_options, run

STATUS_STYLE = {"pass": "green", "fail": "bold red", "skip": "yellow"}
WORDS = {"pass": "passed", "fail": "failed", "skip": "skipped"}


def doctor(
    ctx: typer.Context,
    device: Annotated[
        str,
        typer.Option("--device", help="What to check: all, cpu, cuda (every GPU) or cuda:N."),
    ] = "all",
    quiet: Quiet = False,
    json: Json = False,
) -> None:
    """Check this installation: versions, devices, and the nearest-code kernel on each.

    On every device: exact-mode indices against float64 on random and on large-offset
    data, the fast mode's distance gap against its documented bound, and a short timing
    against torch addmm + argmin. One line per check, PASS or FAIL with its figure; exits
    1 when any check fails. Paste the output into bug reports.

    **Examples**

      discretae doctor

      discretae doctor --json > doctor.json
    """
    from discretae.commands.doctor import doctor as doctor_command
    from discretae.commands.doctor import require_passed

    result: dict = {}

    @functools.wraps(doctor_command)
    def keep(**options) -> dict:  # the runner prints the result; the exit code needs it too
        result.update(doctor_command(**options))
        return result

    run(keep, **given_options(ctx), table=_report, bar="checks")
    require_passed(result)


def _report(result: dict) -> RenderableType:
    """Versions, one line per device, one row per check, and a count."""
    lines = [Text(" · ".join(f"{k} {v or 'not installed'}" for k, v in result["versions"].items()))]
    for dev in result["devices"]:
        lines.append(Text(f"{dev['device']}: {_device_line(dev)}"))
    table = Table(box=box.SIMPLE, pad_edge=False, show_edge=False)
    for name in ("", "device", "check", "N x K x D"):
        table.add_column(name, no_wrap=True)
    table.add_column("figure", overflow="fold")
    for c in result["checks"]:
        shape = "x".join(map(str, c["shape"])) if c["shape"] else "-"
        status = Text(c["status"].upper(), style=STATUS_STYLE[c["status"]])
        table.add_row(status, f"{c['device']} {c['backend']}", c["check"], shape, c["figure"])
    counts = {s: sum(c["status"] == s for c in result["checks"]) for s in STATUS_STYLE}
    summary = ", ".join(f"{n} {WORDS[s]}" for s, n in counts.items())
    return Group(*lines, table, Text(f"{len(result['checks'])} checks: {summary}"))


def _device_line(dev: dict) -> str:
    if dev["device"].startswith("cuda"):
        what = (
            f"{dev['name']}, capability {dev['capability']}, {dev['memory_gib']} GiB, "
            f"{dev['multiprocessors']} SMs"
        )
    else:
        what = f"{dev['name']}, {dev['threads']} torch threads"
    b = dev["backends"]
    return f"{what}; nearest_code backend: {b['auto']}; triton kernel: {b['triton']}"
