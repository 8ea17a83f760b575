"""The shared runner on stand-in commands: what reaches stdout and stderr, and when."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer

from discretae.cli._output import rows_table
from discretae.cli.runner import run


def table(result: dict):
    return rows_table("stand-in", [("value", result["value"]), ("path", result["path"])])


def command_that_warns(data: str, *, callback=None, warn=None) -> dict:
    callback({"stage": "work", "done": 1, "total": 2})
    warn("1 unreadable file skipped:\n broken.png")
    callback({"stage": "work", "done": 2, "total": 2})
    return {"value": np.float32(0.25), "path": Path(data), "missing": float("nan")}


def command_without_warnings(data: str, *, callback=None) -> dict:
    return {"value": 1, "path": data}


def test_table_and_one_line_warning(capsys):
    run(command_that_warns, "x.npy", quiet=False, json=False, table=table)
    out, err = capsys.readouterr()
    assert "stand-in" in out and "0.2500" in out and "x.npy" in out
    assert [line for line in err.splitlines() if line.startswith("warning:")] == [
        "warning: 1 unreadable file skipped: broken.png"
    ]


def test_json_is_all_of_stdout(capsys):
    run(command_that_warns, "x.npy", quiet=False, json=True, table=table)
    out, err = capsys.readouterr()
    assert json.loads(out) == {"value": 0.25, "path": "x.npy", "missing": None}
    assert err.startswith("warning:")  # warnings still go to stderr, bars do not


def test_quiet_prints_nothing(capsys):
    run(command_that_warns, "x.npy", quiet=True, json=False, table=table)
    assert capsys.readouterr() == ("", "")
    run(command_that_warns, "x.npy", quiet=True, json=True, table=table)
    out, err = capsys.readouterr()
    assert json.loads(out)["value"] == 0.25 and err == ""


def test_warn_is_passed_only_to_commands_that_take_it(capsys):
    run(command_without_warnings, "y.npy", quiet=False, json=True, table=table)
    assert json.loads(capsys.readouterr().out) == {"value": 1, "path": "y.npy"}


def test_interrupted_training_ends_with_its_message_and_signal(capsys):
    from discretae import TrainingInterrupted

    def interrupted_fit(*, callback=None) -> dict:
        raise TrainingInterrupted(signum=15, step=7, checkpointed=True)

    with pytest.raises(typer.Exit) as stop:
        run(interrupted_fit, quiet=False, json=False, table=table, interrupted=lambda e: f"{e}!")
    assert stop.value.exit_code == 128 + 15
    assert capsys.readouterr().err == "error: interrupted by SIGTERM after step 7!\n"
    # without a message for it, Ctrl-C goes on to the one error handler (exit 130)
    with pytest.raises(KeyboardInterrupt):
        run(interrupted_fit, quiet=False, json=False, table=table)
