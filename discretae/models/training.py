"""The fit loop: Adam on reconstruction + auxiliary losses, with progress, checkpoints and DDP.

All mutable training state lives in ``TrainState`` (model, optimizer, counters, history,
the shuffling generator and the running sums of the current epoch), so a checkpoint only
needs that object and the global RNG states; ``train`` continues from ``state.step``,
even in the middle of an epoch (the epoch's shuffle is replayed from its saved seed state).

Under ``torchrun`` (see :mod:`discretae.core.distributed`) the model is wrapped in
DistributedDataParallel. ``batch_size`` is then the global batch: every rank draws the
same shuffle and takes its consecutive share of each batch, and each rank's loss is
weighted by its share, so the averaged gradient is the single-process gradient of the
same batch (up to float summation order). A last batch with fewer inputs than ranks is
skipped. Only rank 0 calls ``callback`` and ``checkpoint``.
"""

from __future__ import annotations

import inspect
import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from discretae.core import distributed
from discretae.core.errors import DiscretaeError
from discretae.models.neighbours import draw_neighbours, mine_neighbours
from discretae.models.spikes import SpikeGuard
from discretae.quantizers import perplexity_from_counts

_SUMS = ("loss", "recon", "aux")


class TrainingDiverged(DiscretaeError):
    """The loss (or a weight) became NaN or infinite; ``step`` is the step that failed."""

    def __init__(self, message: str, step: int) -> None:
        super().__init__(message)
        self.step = step


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; the step in flight finished and a checkpoint was saved.

    ``signum`` is the signal, ``step`` the steps completed, ``checkpointed`` whether a
    checkpoint was written (False when no checkpoint callable was given).
    """

    def __init__(self, signum: int, step: int, checkpointed: bool) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name} after step {step}")
        self.signum, self.step, self.checkpointed = signum, step, checkpointed


@dataclass
class TrainState:
    """Everything a training run mutates.

    model: an ``Autoencoder``; optimizer: its optimizer; generator: the CPU generator
    that shuffles the data; epoch: epochs completed; step: optimisation steps completed;
    history: one dict per completed epoch. The current epoch: ``batch`` steps done,
    ``epoch_rng`` the generator state its shuffle was drawn from, ``epoch_sums`` running
    loss sums, ``epoch_keys`` the code keys seen so far, ``epoch_seen`` the distinct
    ones (kept for the progress callback; None: not gathered yet), ``epoch_seconds``
    time spent before a resume. Neighbour mining (a model whose ``mining`` is set):
    ``neighbours`` the (N, k) table last mined (None: not yet), ``neighbours_epoch``
    the epoch it was mined in.
    """

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    epoch: int = 0
    step: int = 0
    history: list[dict] = field(default_factory=list)
    batch: int = 0
    epoch_rng: torch.Tensor | None = None
    epoch_sums: dict = field(default_factory=lambda: dict.fromkeys(_SUMS, 0.0))
    epoch_keys: list[torch.Tensor] = field(default_factory=list)
    epoch_seen: torch.Tensor | None = None
    epoch_seconds: float = 0.0
    neighbours: torch.Tensor | None = None
    neighbours_epoch: int = 0


def make_train_state(model: torch.nn.Module, *, lr: float = 1e-3, seed: int = 0) -> TrainState:
    """A fresh state: Adam at learning rate ``lr``, shuffling seeded with ``seed``."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    return TrainState(model, optimizer, torch.Generator().manual_seed(seed))


def to_unit_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 (scaled by 1/255) or float -> float32."""
    if x.dtype == torch.uint8:
        return x.to(torch.float32).div_(255.0)
    return x.to(torch.float32)


def steps_per_epoch(n: int, batch_size: int, world: int = 1) -> int:
    """Steps in one pass over ``n`` inputs: a last batch smaller than ``world`` is skipped."""
    return n // batch_size + int(n % batch_size >= world)


class _StopSignals:
    """Turns SIGINT and SIGTERM into a flag read between steps (main thread only); a
    second SIGINT interrupts at once."""

    def __init__(self) -> None:
        self.signum = 0
        self._old: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.signum and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._old.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)


def _wrap(model: torch.nn.Module, device) -> torch.nn.Module:
    if not distributed.is_dist():
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    dev = torch.device(device)
    ids = [dev] if dev.type == "cuda" else None
    # Buffers (the VQ codebook) are equal at the start and kept so by the quantizer's
    # own collectives: no broadcast from rank 0 before every forward.
    no_sync = {"broadcast_buffers": False}
    if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters:
        no_sync = {"forward_sync_buffers": False}  # the newer name of the same switch
    return DDP(model, device_ids=ids, **no_sync)


def _epoch_order(state: TrainState, n: int) -> torch.Tensor:
    """This epoch's shuffle; mid-epoch (after a resume) it is drawn again from its seed."""
    if state.batch == 0:
        state.epoch_rng = state.generator.get_state()
        state.epoch_sums = dict.fromkeys(_SUMS, 0.0)
        state.epoch_keys = []
        state.epoch_seen = None
        state.epoch_seconds = 0.0
    else:
        state.generator.set_state(state.epoch_rng)
    return torch.randperm(n, generator=state.generator)


def _all_epoch_keys(state: TrainState) -> torch.Tensor:
    """The code keys of this epoch so far, from every rank, on every rank."""
    device = next(state.model.parameters()).device
    keys = [k.to(device) for k in state.epoch_keys]
    local = torch.cat(keys) if keys else torch.zeros(0, dtype=torch.int64, device=device)
    return distributed.all_gather_rows(local)


def _close_epoch(state: TrainState, steps: int, seconds: float) -> None:
    _, counts = torch.unique(_all_epoch_keys(state), return_counts=True)
    state.epoch += 1
    state.batch = 0
    state.history.append(
        {
            "epoch": state.epoch,
            **{k: v / steps for k, v in state.epoch_sums.items()},
            "usage": int(counts.numel()),
            "perplexity": float(perplexity_from_counts(counts)),
            "seconds": seconds,
        }
    )
    state.epoch_rng, state.epoch_keys, state.epoch_seen = None, [], None


def _distinct_so_far(state: TrainState) -> int:
    """Distinct code keys of this epoch so far on this rank, the last step's included;
    the set seen before is kept, so each step costs one ``unique`` of it and a batch."""
    before = [state.epoch_seen] if state.epoch_seen is not None else state.epoch_keys[:-1]
    last = state.epoch_keys[-1]
    state.epoch_seen = torch.unique(torch.cat([k.to(last.device) for k in before] + [last]))
    return int(state.epoch_seen.numel())


def _check_finite(state: TrainState, where: str) -> None:
    tensors = list(state.model.parameters()) + list(state.model.buffers())
    if not all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point()):
        raise TrainingDiverged(
            f"training diverged: a weight is NaN or infinite {where}, so no checkpoint "
            "was written (a lower learning rate, --lr, may help)",
            state.step,
        )


def _save(state: TrainState, checkpoint: Callable[[TrainState], None]) -> None:
    """Rank 0 writes; all ranks learn whether it worked (so none waits forever)."""
    keys = _all_epoch_keys(state)  # rank 0 saves them all; the others start afresh
    state.epoch_keys = [keys] if distributed.is_main() else []
    _check_finite(state, f"after step {state.step}")
    error = None
    if distributed.is_main():
        try:
            checkpoint(state)
        except BaseException as e:  # re-raised below, after the other ranks hear of it
            error = e
    device = next(state.model.parameters()).device
    failed = torch.tensor([float(error is not None)], device=device)
    distributed.all_reduce_(failed)
    if error is not None:
        raise error
    if float(failed):
        raise DiscretaeError("rank 0 could not write the checkpoint; see its error")


# learning-rate curves: the fraction of the run held at the initial rate before half a
# cosine takes it to 0 (None: held all along)
LR_SCHEDULES = {"constant": None, "cosine": 0.0, "hold-cosine": 0.8}


def check_lr_schedule(name) -> float | None:
    """The curve's held fraction (see ``LR_SCHEDULES``); DiscretaeError for an unknown one."""
    if name not in LR_SCHEDULES:
        raise DiscretaeError(
            f"lr_schedule={name!r} is not one of {', '.join(map(repr, LR_SCHEDULES))}"
        )
    return LR_SCHEDULES[name]


def _set_cosine_lr(optimizer: torch.optim.Optimizer, frac: float, hold: float = 0.0) -> None:
    t = min(max((frac - hold) / (1.0 - hold), 0.0), 1.0)
    for group in optimizer.param_groups:
        base = group.setdefault("initial_lr", group["lr"])
        group["lr"] = base * 0.5 * (1.0 + math.cos(math.pi * t))


def train(
    state: TrainState,
    data: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    device: torch.device | str = "cpu",
    callback: Callable[[dict], None] | None = None,
    checkpoint: Callable[[TrainState], None] | None = None,
    checkpoint_every: int = 0,
    lr_schedule: str = "constant",
    targets: torch.Tensor | None = None,
    spike_guard: bool = False,
) -> TrainState:
    """Train ``state.model`` on ``data`` until ``state.epoch == epochs``.

    Args:
        data: (N, *input_shape), uint8 or float in [0, 1], on any device; batches are
            moved to ``device`` one at a time. Under DDP every rank passes the same data.
        epochs: total epochs, counting those already in ``state``.
        batch_size: inputs per step (the global batch under DDP); the last batch of an
            epoch may be smaller.
        callback: called on rank 0 after every step with ``{"epoch", "epochs", "step",
            "steps_per_epoch", "loss", "usage", "perplexity"}`` (epoch and step count
            from 1, step within the epoch; loss is the global batch's, usage the number
            of distinct codes rank 0 has seen so far in this epoch, perplexity that of
            rank 0's share of the batch).
        checkpoint: called on rank 0 with the state every ``checkpoint_every`` steps
            (0: never) and when SIGINT or SIGTERM arrives.
        lr_schedule: "constant"; "cosine": the learning rate falls from the
            optimizer's initial one to 0 along half a cosine over all steps;
            "hold-cosine": it stays at the initial rate for 80% of the steps, then falls
            along half a cosine. A function of the step, so a resumed run follows the
            same curve.
        targets: (N,) int64, a code for every input (an ensemble's consensus), or
            None; the model adds the cross-entropy of its code logits against them.
        spike_guard: undo an epoch whose reconstruction loss spiked (``SpikeGuard``).

    Each finished epoch appends ``{"epoch", "loss", "recon", "aux", "usage",
    "perplexity", "seconds"}`` to ``state.history``: mean losses over the epoch's steps,
    and distinct codes and perplexity of all codes the epoch produced.

    Raises:
        TrainingDiverged: the loss is NaN or infinite; that step is not taken.
        TrainingInterrupted: SIGINT or SIGTERM; the step in flight is finished and a
            checkpoint written first.
    """
    hold = check_lr_schedule(lr_schedule)
    world = distributed.world_size()
    steps = steps_per_epoch(data.shape[0], batch_size, world)
    if steps == 0:
        raise DiscretaeError(f"{data.shape[0]} inputs cannot be shared by {world} processes")
    mining = getattr(state.model, "mining", None)
    if mining is not None:
        mining.check(data.shape[0])
    run = _Run(
        data=data,
        epochs=epochs,
        batch_size=batch_size,
        device=device,
        steps=steps,
        total_steps=max(1, epochs * steps),
        hold=hold,
        world=world,
        rank=distributed.rank(),
        callback=callback,
        checkpoint=checkpoint,
        checkpoint_every=checkpoint_every,
        mining=mining,
        targets=None if targets is None else torch.as_tensor(targets, dtype=torch.int64),
    )
    net = _wrap(state.model, device)
    state.model.train()
    guard = SpikeGuard(state, spike_guard)
    with _StopSignals() as stop:
        while state.epoch < epochs:
            _run_epoch(state, net, run, stop)
            guard.after_epoch(state)
    state.model.eval()
    return state


@dataclass(frozen=True)
class _Run:
    """The settings of one ``train`` call: ``steps`` per epoch, ``total_steps`` in all,
    ``hold`` the held fraction of the learning-rate curve (None: constant)."""

    data: torch.Tensor
    epochs: int
    batch_size: int
    device: torch.device | str
    steps: int
    total_steps: int
    hold: float | None
    world: int
    rank: int
    callback: Callable[[dict], None] | None
    checkpoint: Callable[[TrainState], None] | None
    checkpoint_every: int
    mining: object = None  # the model's NeighbourMining, or None
    targets: torch.Tensor | None = None  # (N,) a code per input, or None


def _run_epoch(state: TrainState, net: torch.nn.Module, run: _Run, stop: _StopSignals) -> None:
    """The rest of the current epoch: from ``state.batch``, step by step."""
    order = _epoch_order(state, run.data.shape[0]).to(run.data.device)
    start = time.perf_counter() - state.epoch_seconds
    for i in range(state.batch, run.steps):
        rows = order[i * run.batch_size : (i + 1) * run.batch_size]
        out, values = _step(state, net, run, rows, stop)
        if run.callback is not None and run.rank == 0:
            run.callback(_progress(state, run, out, values[0]))
        state.epoch_seconds = time.perf_counter() - start
        if state.batch == run.steps:
            _close_epoch(state, run.steps, state.epoch_seconds)
        if values[3] > 0:  # some rank was signalled: all stop after this step
            if run.checkpoint is not None:
                _save(state, run.checkpoint)
            signum = stop.signum or signal.SIGINT
            raise TrainingInterrupted(signum, state.step, run.checkpoint is not None)
        due = run.checkpoint_every > 0 and state.step % run.checkpoint_every == 0
        if run.checkpoint is not None and due:
            _save(state, run.checkpoint)


def _step(
    state: TrainState, net: torch.nn.Module, run: _Run, rows: torch.Tensor, stop: _StopSignals
) -> tuple[dict, list[float]]:
    """One optimisation step on this rank's share of the batch ``rows`` (indices into the
    data). Returns the model's output and the global batch's [loss, recon, aux,
    signalled] (signalled > 0: some rank got SIGINT or SIGTERM)."""
    model = state.model
    mine = rows.tensor_split(run.world)[run.rank] if run.world > 1 else rows
    share = len(mine) / len(rows)
    model.set_progress(state.step / run.total_steps)
    if run.hold is not None:
        _set_cosine_lr(state.optimizer, state.step / run.total_steps, run.hold)
    extra = _neighbour_inputs(state, run, mine)
    if run.targets is not None:
        extra["targets"] = run.targets[mine.to(run.targets.device)].to(run.device)
    out = net(to_unit_float(run.data[mine].to(run.device)), **extra)
    loss = out["recon_loss"] + out["aux_loss"]
    # one all-reduce: the global batch's losses, and whether a rank was signalled
    parts = [loss, out["recon_loss"], out["aux_loss"]]
    totals = torch.stack([p.detach().float() * share for p in parts])
    totals = torch.cat([totals, totals.new_tensor([float(stop.signum > 0)])])
    distributed.all_reduce_(totals)
    values = totals.tolist()
    if not math.isfinite(values[0]):
        raise TrainingDiverged(
            f"training diverged: the loss is {values[0]} at step {state.step + 1} "
            f"(epoch {state.epoch + 1}, batch {state.batch + 1} of {run.steps}), so that step "
            "was not taken (a lower learning rate, --lr, may help)",
            state.step + 1,
        )
    state.optimizer.zero_grad(set_to_none=True)
    (loss * (share * run.world) if run.world > 1 else loss).backward()
    state.optimizer.step()
    state.step += 1
    state.batch += 1
    for k, v in zip(_SUMS, values[:3], strict=True):
        state.epoch_sums[k] += v
    state.epoch_keys.append(model.quantizer.code_keys(out["codes"].detach()))
    return out, values


def _neighbour_inputs(state: TrainState, run: _Run, mine: torch.Tensor) -> dict:
    """The forward's extra inputs for neighbour mining: ``{"neighbours": one mined
    neighbour of each of this rank's rows}``, mining the table first when it is due;
    {} without mining or before the first one. Under DDP every rank mines over all the
    data (the same data and weights), so no collective is needed."""
    if run.mining is None:
        return {}
    mined = state.neighbours_epoch if state.neighbours is not None else None
    where = dict(step=state.step, epoch=state.epoch, batch=state.batch)
    if run.mining.due(**where, total_steps=run.total_steps, mined_epoch=mined):
        model = state.model
        model.eval()
        try:
            state.neighbours = mine_neighbours(
                lambda i, j: model.embed(to_unit_float(run.data[i:j].to(run.device))),
                run.data.shape[0],
                run.mining.k,
            )
        finally:
            model.train()
        state.neighbours_epoch = state.epoch
    if state.neighbours is None:
        return {}
    picked = draw_neighbours(state.neighbours, mine).to(run.data.device)
    return {"neighbours": to_unit_float(run.data[picked].to(run.device))}


def _progress(state: TrainState, run: _Run, out: dict, loss: float) -> dict:
    """What the progress callback gets after a step (see ``train``)."""
    return {
        "epoch": state.epoch + 1,
        "epochs": run.epochs,
        "step": state.batch,
        "steps_per_epoch": run.steps,
        "loss": loss,
        "usage": _distinct_so_far(state),
        "perplexity": float(out["stats"]["perplexity"]),
    }
