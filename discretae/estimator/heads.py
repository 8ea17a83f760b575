"""``objective_options={"heads": H}``: train H code heads at once and keep one, chosen
without labels.

IIC trains several clustering heads on one encoder and keeps the best; here the
quantizer's code is head 0 and the other H - 1 heads are codebooks over the same content
latent that train with the same code terms (:mod:`discretae.models.objectives`). After
the fit every head clusters the training images, and the kept head is the one whose
clusters agree best with the other heads' (mean NMI: the head the others vote for; the
first on a tie, so head 0 when all agree). When that is not head 0, the model trains on
toward it for a short distillation, the ensemble's (:mod:`discretae.estimator.ensemble`):
its own objectives plus the cross-entropy of its code against the kept head's clusters,
renumbered to match its codes. So the one exported code (the quantizer's, which the
decoder reads) carries the kept head's clusters. ``heads_`` records the agreements,
the kept head, the distillation's steps and its fidelity (NMI of the final codes to the
kept head's clusters).
"""

from __future__ import annotations

import numpy as np
import torch

from discretae.core import distributed
from discretae.core.errors import DiscretaeError
from discretae.estimator.ensemble import aligned
from discretae.estimator.fitted import INFER_BATCH
from discretae.evaluation.metrics import nmi
from discretae.models.training import to_unit_float

HEAD_RULE = "kept: the head whose clusters agree best with the other heads' (mean NMI); no labels"


def head_agreement(parts: list[np.ndarray]) -> list[float]:
    """Each head's mean NMI to the other heads' cluster ids."""
    return [
        float(np.mean([nmi(p, q) for j, q in enumerate(parts) if j != i]))
        for i, p in enumerate(parts)
    ]


class Offset:
    """A distillation's step events continued from the fit's own ``done`` epochs, marked
    with its ``phase``."""

    def __init__(self, callback, done: int, phase: str) -> None:
        self.callback, self.done, self.phase = callback, done, phase

    def __call__(self, event: dict) -> None:
        epochs = self.done + int(event["epochs"])
        self.callback({**event, "epoch": self.done + int(event["epoch"]), "epochs": epochs,
                       "phase": self.phase})  # fmt: skip


def continued(est, phase: str) -> Offset | None:
    """The callback for a distillation after ``est``'s fit: its own, continued."""
    return None if est.callback is None else Offset(est.callback, len(est.history_), phase)


class HeadsFit:
    """The estimator's choice among code heads (a mixin of ``DiscreteAutoencoder``)."""

    def _check_heads(self) -> None:
        """Refuse, before any work, what the choice cannot do: it runs in one process."""
        heads = (self.objective_options or {}).get("heads", 1)
        if heads != 1 and distributed.world_size() > 1:
            raise DiscretaeError(f"heads={heads} runs in one process, not under torchrun")

    def _head_codes(self, data: torch.Tensor) -> torch.Tensor:
        """data (N, *input_shape_) on CPU -> (N, H) every head's codes."""
        return torch.cat([
            self.model_.head_codes(to_unit_float(data[i : i + INFER_BATCH].to(self.device_))).cpu()
            for i in range(0, data.shape[0], INFER_BATCH)
        ])  # fmt: skip

    def _choose_head(self, data: torch.Tensor, seed: int) -> None:
        """With extra heads, keep the head the others agree with most (module docstring)."""
        objectives = self.model_.objectives
        if objectives is None or objectives.extra_heads is None:
            return
        codes = self._head_codes(data).numpy()
        parts = [codes[:, i] for i in range(codes.shape[1])]
        agreement = head_agreement(parts)
        kept = int(np.argmax(agreement))
        steps, fidelity = 0, 1.0  # head 0 is the exported code itself
        if kept != 0:
            k = int(self.model_.config["n_codes"])
            targets = aligned(parts[kept], parts[0], k)
            cb = continued(self, "kept head")
            state = self._distill(self, data, targets, seed, cb, phase="kept head")
            self._set_fitted(state, self.input_shape_, self.device_)
            codes = self._encode(data)
            self._fit_clusters(codes, seed)
            # of the code, not the clusters: with n_clusters set, k-means groups the codes
            steps, fidelity = state.step, nmi(parts[kept], codes.numpy().reshape(-1))
        self.heads_ = {
            "heads": len(parts),
            "agreement": agreement,
            "kept": kept,
            "distill_steps": steps,
            "fidelity": fidelity,
            "rule": HEAD_RULE,
        }
