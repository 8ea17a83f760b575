"""Neighbour mining for the neighbour-consistency objective (SCAN's).

Every training image gets its ``k`` nearest neighbours in the contrastive embedding
(the ``h`` part of the encoder's output, L2-normalised as the contrastive term uses it),
found by the exact k-NN search of :func:`discretae.kernels.nearest_codes` over all
training images. The table (N, k) is mined for the first time once a fraction
``start`` of the training steps is done (before that the embedding means little) and
mined again at the start of every ``every``-th epoch after that. The training loop
(:mod:`discretae.models.training`) keeps the table in its state, so a checkpoint holds
it and a resumed run draws from the same neighbours.

Each step then pairs every image of the batch with one of its neighbours drawn at
random (torch's global CPU generator, which a checkpoint saves); the neighbour goes
through the encoder as a third augmented view, and the objective asks the two codes to
agree (``neighbour_loss`` in :mod:`discretae.models.objectives`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from discretae.core.errors import DiscretaeError
from discretae.kernels import nearest_codes

# images embedded per encoder call while mining
MINE_BATCH = 1024


@dataclass(frozen=True)
class NeighbourMining:
    """When and how many neighbours to mine: ``k`` per image, first after a fraction
    ``start`` in [0, 1) of the training steps, then at the start of every ``every``-th
    epoch."""

    k: int
    start: float
    every: int

    def due(
        self, *, step: int, epoch: int, batch: int, total_steps: int, mined_epoch: int | None
    ) -> bool:
        """Whether to mine before the step after ``step`` steps (``batch`` of them in the
        current ``epoch``); ``mined_epoch`` is the epoch of the last mining (None: never)."""
        if mined_epoch is None:
            return step >= math.ceil(self.start * total_steps)
        return batch == 0 and epoch - mined_epoch >= self.every

    def check(self, n: int) -> None:
        """Refuse data of ``n`` images, too few for ``k`` neighbours each."""
        if n < self.k + 1:
            raise DiscretaeError(
                f"n_neighbours={self.k} needs at least {self.k + 1} training images, got {n}"
            )


def nearest_neighbours(h: torch.Tensor, k: int) -> torch.Tensor:
    """h: (N, E) embeddings -> (N, k) int64 indices of each row's k nearest other rows
    (squared Euclidean distance, exact; ties to the lowest index), nearest first.

    A row is never its own neighbour: the search asks for k + 1 and drops the row's own
    index wherever it came (an exact duplicate of a row may come before it), else the
    last one.
    """
    n = h.shape[0]
    if not 1 <= k < n:
        raise DiscretaeError(f"{k} neighbours need 1 <= k < {n} (the number of rows)")
    idx, _ = nearest_codes(h, h, k + 1)
    idx = idx.cpu()
    own = idx == torch.arange(n).unsqueeze(1)
    drop = torch.where(own.any(1), own.to(torch.int8).argmax(1), k)
    keep = torch.ones_like(own)
    keep[torch.arange(n), drop] = False
    return idx[keep].view(n, k)


@torch.no_grad()
def mine_neighbours(
    embed: Callable[[int, int], torch.Tensor], n: int, k: int, *, batch: int = MINE_BATCH
) -> torch.Tensor:
    """-> (n, k) int64 on the CPU: the ``k`` nearest neighbours of ``n`` images, where
    ``embed(i, j)`` gives the (j - i, E) normalised embeddings of images i to j - 1."""
    h = torch.cat([embed(i, min(i + batch, n)).float() for i in range(0, n, batch)])
    return nearest_neighbours(h, k)


def draw_neighbours(table: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """table (N, k), rows (B,) indices into it -> (B,) one neighbour of each row, drawn
    uniformly from the torch global CPU generator."""
    rows = rows.cpu()
    pick = torch.randint(table.shape[1], (rows.shape[0],))
    return table[rows, pick]
