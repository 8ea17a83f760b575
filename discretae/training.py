"""The fit loop: Adam on reconstruction + auxiliary losses, with progress events.

All mutable training state lives in ``TrainState`` (model, optimizer, epoch, step,
history, shuffling generator), so checkpoints and resuming only need to save and
restore that object; ``train`` picks up at ``state.epoch``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .quantizers import perplexity_from_counts


@dataclass
class TrainState:
    """Everything a training run mutates.

    model: an ``Autoencoder``; optimizer: its optimizer; epoch: epochs completed;
    step: optimisation steps completed; history: one dict per completed epoch;
    generator: the CPU generator that shuffles the data.
    """

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    epoch: int = 0
    step: int = 0
    history: list[dict] = field(default_factory=list)


def make_train_state(model: torch.nn.Module, *, lr: float = 1e-3, seed: int = 0) -> TrainState:
    """A fresh state: Adam at learning rate ``lr``, shuffling seeded with ``seed``."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    return TrainState(model, optimizer, torch.Generator().manual_seed(seed))


def to_unit_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 (scaled by 1/255) or float -> float32."""
    if x.dtype == torch.uint8:
        return x.to(torch.float32).div_(255.0)
    return x.to(torch.float32)


def train(
    state: TrainState,
    data: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    device: torch.device | str = "cpu",
    callback: Callable[[dict], None] | None = None,
) -> TrainState:
    """Train ``state.model`` on ``data`` until ``state.epoch == epochs``.

    Args:
        data: (N, *input_shape), uint8 or float in [0, 1], on any device; batches are
            moved to ``device`` one at a time.
        epochs: total epochs, counting those already in ``state``.
        batch_size: inputs per step; the last batch of an epoch may be smaller.
        callback: called after every step with ``{"epoch", "epochs", "step",
            "steps_per_epoch", "loss", "usage", "perplexity"}`` (epoch and step count
            from 1, step within the epoch; usage is the number of distinct codes in the
            batch).

    Each finished epoch appends ``{"epoch", "loss", "recon", "aux", "usage",
    "perplexity", "seconds"}`` to ``state.history``: mean losses over the epoch's steps,
    and distinct codes and perplexity of all codes the epoch produced.
    """
    model = state.model
    n = data.shape[0]
    steps_per_epoch = math.ceil(n / batch_size)
    total_steps = max(1, epochs * steps_per_epoch)
    model.train()
    while state.epoch < epochs:
        start = time.perf_counter()
        order = torch.randperm(n, generator=state.generator).to(data.device)
        sums = {"loss": 0.0, "recon": 0.0, "aux": 0.0}
        keys = []
        for i in range(steps_per_epoch):
            model.set_progress(state.step / total_steps)
            batch = to_unit_float(data[order[i * batch_size : (i + 1) * batch_size]].to(device))
            out = model(batch)
            loss = out["recon_loss"] + out["aux_loss"]
            state.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            state.optimizer.step()
            state.step += 1
            loss_value = float(loss.detach())
            sums["loss"] += loss_value
            sums["recon"] += float(out["recon_loss"].detach())
            sums["aux"] += float(out["aux_loss"].detach())
            keys.append(model.quantizer.code_keys(out["codes"].detach()))
            if callback is not None:
                callback(
                    {
                        "epoch": state.epoch + 1,
                        "epochs": epochs,
                        "step": i + 1,
                        "steps_per_epoch": steps_per_epoch,
                        "loss": loss_value,
                        "usage": int(out["stats"]["n_used"]),
                        "perplexity": float(out["stats"]["perplexity"]),
                    }
                )
        _, counts = torch.unique(torch.cat(keys), return_counts=True)
        state.epoch += 1
        state.history.append(
            {
                "epoch": state.epoch,
                **{k: v / steps_per_epoch for k, v in sums.items()},
                "usage": int(counts.numel()),
                "perplexity": float(perplexity_from_counts(counts)),
                "seconds": time.perf_counter() - start,
            }
        )
    model.eval()
    return state
