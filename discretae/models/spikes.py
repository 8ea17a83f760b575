"""The spike guard of the fit loop (``training.train(spike_guard=True)``): an epoch
whose reconstruction loss jumped is undone and run again at half the learning rate.

The state it reads and rolls back is a ``training.TrainState``: its model, optimizer,
epoch and step counters and history.
"""

from __future__ import annotations

import copy

# the spike guard (``train(spike_guard=True)``): how far above the best earlier epoch an
# epoch's mean reconstruction loss must rise to be undone, and how many times a run may
# be. On openclipart at 64x64 (rvq, 16x16 grid, 3 levels, 15 epochs at a constant
# 1e-3), one fit's loss stepped from 0.00199 to 0.0219 within a few steps of epoch 14
# (the gradient norm from 0.03 to 6) and had not come back at epoch 15: the fitted
# model decoded at 21.3 dB where the fits around it gave 26.5. Epoch to epoch, the
# loss of that run otherwise never rose by more than 10%.
SPIKE = 2.0
MAX_ROLLBACKS = 3


class SpikeGuard:
    """For a loss that should only fall (reconstruction alone, nothing annealed): an
    epoch whose mean reconstruction loss is more than ``SPIKE`` times the best earlier
    epoch's is undone (weights, optimizer, step) back to the end of the last good epoch,
    its history entry kept with ``"rolled_back": True``, and run again at half the
    learning rate; at most ``MAX_ROLLBACKS`` times a run. All ranks see the same
    all-reduced losses, so they all decide alike. ``enabled`` False: it does nothing."""

    def __init__(self, state, enabled: bool = True) -> None:
        self.enabled = enabled
        kept = [h["recon"] for h in state.history if not h.get("rolled_back")]
        self.best = min(kept, default=None)
        self.snapshot = None
        self.cuts = 0  # rollbacks to the current snapshot
        if enabled and state.batch == 0:  # an epoch boundary: a resumed run mid-epoch waits for one
            self._take(state)

    def _take(self, state) -> None:
        weights = copy.deepcopy(state.model.state_dict())
        optimizer = copy.deepcopy(state.optimizer.state_dict())
        self.snapshot = (weights, optimizer, state.epoch, state.step)
        self.cuts = 0

    def after_epoch(self, state) -> None:
        if not self.enabled:
            return
        recon = state.history[-1]["recon"]
        spiked = self.best is not None and recon > SPIKE * self.best
        rollbacks = sum(bool(h.get("rolled_back")) for h in state.history)
        if spiked and self.snapshot is not None and rollbacks < MAX_ROLLBACKS:
            weights, optimizer, state.epoch, state.step = self.snapshot
            state.model.load_state_dict(weights)
            state.optimizer.load_state_dict(copy.deepcopy(optimizer))
            self.cuts += 1
            for group in state.optimizer.param_groups:
                for key in ("lr", "initial_lr"):
                    if key in group:
                        group[key] *= 0.5**self.cuts
            state.history[-1]["rolled_back"] = True
            return
        self.best = recon if self.best is None else min(self.best, recon)
        self._take(state)
