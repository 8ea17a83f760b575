"""Training checkpoints: one .safetensors file, tensors plus JSON metadata, never pickled.

A checkpoint holds everything a run needs to continue as if it had not stopped:

- tensors: the model's weights and buffers (``model.*``), the optimizer's per-parameter
  state (``optim.<param>.<name>``), the torch CPU and CUDA RNG states, the data
  generator's current state and the state its current epoch's shuffle was drawn from,
  the code keys the current epoch has produced so far, and the mined neighbour table
  (``train.neighbours``) when the neighbours objective has mined one;
- metadata ``config`` (JSON): whatever the caller passes (the estimator's settings,
  the model config, a fingerprint of the data) plus the counters (epoch, step, batch in
  epoch), history, running epoch sums, the optimizer's param groups, and the numpy and
  Python RNG states.

Files are written to a temporary name, synced and renamed into place, so a crash or a
SIGKILL leaves either the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from discretae._version import __version__
from discretae.core.errors import DiscretaeError
from discretae.core.serialization import read_tagged_file, write_tagged_file
from discretae.models.training import TrainState

FORMAT = "discretae-checkpoint"
FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    """A checkpoint read back: ``tensors`` on the CPU and the JSON ``config``."""

    path: Path
    tensors: dict[str, torch.Tensor]
    config: dict

    @property
    def step(self) -> int:
        return int(self.config["train"]["step"])

    @property
    def epoch(self) -> int:
        return int(self.config["train"]["epoch"])


def _optimizer_parts(optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    sd = optimizer.state_dict()
    tensors, values = {}, {}
    for pid, entries in sd["state"].items():
        for name, v in entries.items():
            if torch.is_tensor(v):
                tensors[f"optim.{pid}.{name}"] = v
            else:
                values[f"{pid}.{name}"] = v
    return tensors, {"param_groups": sd["param_groups"], "values": values}


def _rng_parts(state: TrainState) -> tuple[dict, dict]:
    tensors = {"rng.torch": torch.get_rng_state(), "rng.data": state.generator.get_state()}
    if state.epoch_rng is not None:
        tensors["rng.data_epoch"] = state.epoch_rng
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    values = {
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
        "python": [version, list(internal), gauss_next],
    }
    return tensors, values


def write_checkpoint(path: str | os.PathLike, state: TrainState, config: dict) -> None:
    """Write ``state`` and the JSON-able ``config`` to ``path`` atomically."""
    optim_tensors, optim_values = _optimizer_parts(state.optimizer)
    rng_tensors, rng_values = _rng_parts(state)
    tensors = {f"model.{k}": v for k, v in state.model.state_dict().items()}
    tensors.update(optim_tensors)
    tensors.update(rng_tensors)
    if state.epoch_keys:
        tensors["epoch.keys"] = torch.cat([k.cpu() for k in state.epoch_keys])
    if state.neighbours is not None:
        tensors["train.neighbours"] = state.neighbours.cpu()
    full = {
        **config,
        "discretae_version": __version__,
        "train": {
            "epoch": state.epoch,
            "step": state.step,
            "batch": state.batch,
            "history": state.history,
            "epoch_sums": state.epoch_sums,
            "epoch_seconds": state.epoch_seconds,
            "neighbours_epoch": state.neighbours_epoch,
        },
        "optimizer": optim_values,
        "rng": rng_values,
    }
    write_tagged_file(path, tensors, full, fmt=FORMAT, version=FORMAT_VERSION, fsync=True)


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint written by :func:`write_checkpoint`.

    Raises:
        DiscretaeError: a missing or unreadable file, a safetensors file that is not a
            discretae checkpoint (a model file, say), or a newer format version.
    """
    p = Path(path)
    tensors, config = read_tagged_file(
        p,
        fmt=FORMAT,
        version=FORMAT_VERSION,
        what="checkpoint",
        hint="; --resume takes the file written by --checkpoint-every or by Ctrl-C, not a model",
    )
    if not isinstance(config.get("train"), dict) or "step" not in config["train"]:
        raise DiscretaeError(f"{str(p)!r} is not a readable discretae checkpoint: no train step")
    return Checkpoint(p, tensors, config)


def restore_train_state(ck: Checkpoint, state: TrainState) -> None:
    """Load the model, optimizer, counters and data generator of ``ck`` into ``state``
    (built as for a fresh run with the same settings)."""
    t, train = ck.tensors, ck.config["train"]
    try:
        model = {k[len("model.") :]: v for k, v in t.items() if k.startswith("model.")}
        state.model.load_state_dict(model, strict=True)
        per_param: dict[int, dict] = {}
        for k, v in t.items():
            if k.startswith("optim."):
                _, pid, name = k.split(".", 2)
                per_param.setdefault(int(pid), {})[name] = v
        for k, v in ck.config["optimizer"]["values"].items():
            pid, name = k.split(".", 1)
            per_param.setdefault(int(pid), {})[name] = v
        groups = ck.config["optimizer"]["param_groups"]
        state.optimizer.load_state_dict({"state": per_param, "param_groups": groups})
    except (KeyError, ValueError, RuntimeError) as e:
        raise DiscretaeError(f"{str(ck.path)!r} does not fit this model: {e}") from None
    state.epoch, state.step, state.batch = train["epoch"], train["step"], train["batch"]
    state.history = list(train["history"])
    state.epoch_sums = dict(train["epoch_sums"])
    state.epoch_seconds = float(train["epoch_seconds"])
    state.generator.set_state(t["rng.data"])
    state.epoch_rng = t.get("rng.data_epoch")
    keys = t.get("epoch.keys")
    state.epoch_keys = [keys] if keys is not None else []
    state.neighbours = t.get("train.neighbours")
    state.neighbours_epoch = int(train.get("neighbours_epoch", 0))


def restore_rng(ck: Checkpoint) -> None:
    """Set the global torch (CPU and CUDA), numpy and Python RNGs to the saved states."""
    t, rng = ck.tensors, ck.config["rng"]
    torch.set_rng_state(t["rng.torch"])
    cuda_keys = [k for k in t if k.startswith("rng.cuda.")]
    cuda = [t[k] for k in sorted(cuda_keys, key=lambda k: int(k.rsplit(".", 1)[1]))]
    if cuda and torch.cuda.is_available():
        for i, s in enumerate(cuda[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s, i)
    kind, keys, pos, has_gauss, gauss = rng["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = rng["python"]
    random.setstate((version, tuple(internal), gauss_next))
