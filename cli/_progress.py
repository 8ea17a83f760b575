"""Rich progress bars on stderr, driven by the commands' ``callback`` events.

Two kinds: steps of a stream (``{"stage", "done", "total"}`` from encode, decode,
evaluate, merge, compress, decompress) and the steps of a fit (the estimator's per-step
events, from fit and demo). Both show the time elapsed and an estimate of the time left.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ._output import fmt

Callback = Callable[[dict], None]
# what a bar counts: images or rows of a stream, doctor's checks, or the steps of a fit
BarKind = Literal["images", "rows", "checks", "fit"]


def _ignore(event: dict) -> None:
    pass


@contextmanager
def progress_bar(kind: BarKind, enabled: bool) -> Iterator[Callback]:
    """The ``callback`` to hand a command; a no-op when not ``enabled`` (--quiet, --json)."""
    if not enabled:
        yield _ignore
        return
    bar = _fit_bar() if kind == "fit" else _stream_bar(kind)
    try:
        yield bar.on_event
    finally:
        bar.stop()


class _LazyProgress:
    """A Rich progress bar that appears on the first event, so a run that fails during
    validation prints nothing but its one error line."""

    def __init__(self, *columns: ProgressColumn, transient: bool, **fields: Any) -> None:
        # a Console per bar, so CliRunner's captured stderr is honoured
        self.bar = Progress(
            *columns, console=Console(stderr=True, highlight=False), transient=transient
        )
        self.task = self.bar.add_task("", total=None, **fields)
        self.started = False

    def update(self, **kwargs: Any) -> None:
        if not self.started:
            self.bar.start()
            self.started = True
        self.bar.update(self.task, **kwargs)

    def stop(self) -> None:
        if self.started:
            self.bar.stop()


class _StreamBar(_LazyProgress):
    """Counts of ``what`` (images, steps), or of the unit an event names ("unit")."""

    def __init__(self, *columns: ProgressColumn, what: str, **kwargs: Any) -> None:
        super().__init__(*columns, unit=what, **kwargs)
        self.what = what

    def on_event(self, event: dict) -> None:
        self.update(
            total=event.get("total"),
            completed=event["done"],
            description=event.get("stage", ""),
            unit=event.get("unit", self.what),
        )


def _stream_bar(what: str) -> _StreamBar:
    return _StreamBar(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[unit]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        transient=True,
        what=what,
    )


class _FitBar(_LazyProgress):
    """Shows the epoch's mean loss so far (the last batch of an epoch can be a handful of
    images, whose own loss says little) and the distinct codes the epoch has used so far.
    Work after the epochs (the code prior's training) reports stream events: the fit's
    bar then stays as it ended and a stream bar follows it."""

    epoch: Any = None  # the epoch whose losses are summed below
    loss_sum, n_losses = 0.0, 0
    after: _StreamBar | None = None

    def on_event(self, event: dict) -> None:
        if "stage" in event:
            if self.after is None:
                super().stop()
                self.after = _stream_bar("steps")
            self.after.on_event(event)
            return
        epochs, steps = int(event["epochs"]), int(event["steps_per_epoch"])
        if self.epoch != event["epoch"]:
            self.epoch, self.loss_sum, self.n_losses = event["epoch"], 0.0, 0
        self.loss_sum += float(event["loss"])
        self.n_losses += 1
        usage = event.get("usage")
        self.update(
            total=epochs * steps,
            # the estimator counts epochs and steps from 1
            completed=(int(event["epoch"]) - 1) * steps + int(event["step"]),
            epoch=_epoch_text(event, epochs),
            loss=fmt(self.loss_sum / self.n_losses),
            usage="-" if usage is None else str(usage),
        )

    def stop(self) -> None:
        super().stop()
        if self.after is not None:
            self.after.stop()


def _epoch_text(event: dict, epochs: int) -> str:
    """ "epoch 3/12"; an ensemble's events name their phase: "member 2/3, epoch 15/38"."""
    phase = event.get("phase")
    return f"{phase + ', ' if phase else ''}epoch {event['epoch']}/{epochs}"


def _fit_bar() -> _FitBar:
    return _FitBar(
        TextColumn("{task.fields[epoch]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("codes used {task.fields[usage]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        transient=False,
        epoch="epoch -",
        loss="-",
        usage="-",
    )
