"""A fit's checkpoints: what a resumed fit checks against its checkpoint (the same
settings, the same data), and the writer that remembers the last good checkpoint."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

from discretae.core.errors import DiscretaeError
from discretae.data.framing import LEGACY_PARAMS
from discretae.estimator.fitted import stored_params
from discretae.models.checkpoint import write_checkpoint
from discretae.models.training import TrainState


def data_fingerprint(data: torch.Tensor) -> dict:
    """data: (N, ...) uint8 or float32 -> what a resume checks to know it got the same
    data: size, shape, and the plain and position-weighted sums of the per-input totals,
    in [0, 1] units (uint8 / 255)."""
    rows = data.reshape(data.shape[0], -1).sum(1, dtype=torch.float64)
    if data.dtype == torch.uint8:
        rows /= 255.0
    weights = torch.arange(1, rows.numel() + 1, dtype=torch.float64)
    return {
        "n": int(data.shape[0]),
        "shape": [int(s) for s in data.shape[1:]],
        "sum": float(rows.sum()),
        "weighted_sum": float((rows * weights).sum()),
    }


def same_data(a: dict, b: dict) -> bool:
    """Whether two fingerprints describe the same data."""
    # uint8 and its float32 scaling differ by rounding only: 1e-6 is far above that
    if any(a.get(k) != b.get(k) for k in ("n", "shape")):
        return False
    sums = ("sum", "weighted_sum")
    return all(k in a and k in b and math.isclose(a[k], b[k], rel_tol=1e-6) for k in sums)


def check_same_data(ck, fingerprint: dict) -> None:
    """Refuse to resume checkpoint ``ck`` on data other than the data it was trained on."""
    was = ck.config["data"]
    if same_data(was, fingerprint):
        return
    raise DiscretaeError(
        f"cannot resume from {str(ck.path)!r}: it was trained on other data "
        f"({was['n']} inputs of shape {was['shape']}, pixel sum {was['sum']:.6g}); "
        f"got {fingerprint['n']} of shape {fingerprint['shape']}, pixel sum "
        f"{fingerprint['sum']:.6g} (the same data in the same order is needed)"
    )


def checkpoint_params(config: dict) -> dict:
    """A checkpoint's estimator parameters (from its ``config``), with what checkpoints
    written before a parameter existed did: stretch as read, the full decoder."""
    return {**LEGACY_PARAMS, **stored_params(config["params"])}


def check_same_settings(settings: dict, ck) -> None:
    """Refuse to resume checkpoint ``ck`` with ``settings`` (an estimator's model and
    training parameters) other than its own."""
    # a checkpoint from before the framing settings (its images were stretched as read)
    # or before the decoder setting (the full decoder)
    theirs = checkpoint_params(ck.config)
    diff = [
        f"{k}={settings.get(k)!r} (checkpoint: {theirs.get(k)!r})"
        for k in sorted(set(settings) | set(theirs))
        if settings.get(k) != theirs.get(k)
    ]
    if diff:
        raise DiscretaeError(
            f"cannot resume from {str(ck.path)!r}: settings differ: {'; '.join(diff)}; "
            "a resumed run keeps the settings it started with "
            "(DiscreteAutoencoder.from_checkpoint builds a matching estimator)"
        )


@dataclass
class CheckpointWriter:
    """Writes a fit's checkpoints to ``path`` (None: writes none) with ``config``, and
    remembers the last good one: ``last_path`` and ``last_step`` start at the checkpoint
    resumed from, if any."""

    path: str | os.PathLike | None
    config: dict
    last_path: str | os.PathLike | None = None
    last_step: int | None = None

    def save(self, state: TrainState) -> None:
        write_checkpoint(self.path, state, self.config)
        self.last_path, self.last_step = self.path, state.step

    @property
    def callback(self):
        """What ``train`` takes as ``checkpoint``: ``save``, or None without a path."""
        return None if self.path is None else self.save
