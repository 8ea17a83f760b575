"""Samples kept while a collection streams through a model, for what needs images after
the pass: the per-cluster montage and the discriminator score."""

from __future__ import annotations

import numpy as np

from discretae.core.images import to_uint8

# Images kept (as uint8) for the per-cluster montage. Up to this size every image is kept
# (all of Fashion-MNIST fits), so the figure's cluster sizes are exact; beyond it, a
# uniform 1-in-k sample, whose sizes are then those of the sample.
MONTAGE_BYTES = 64 * 2**20
# The discriminator score trains on at most this many images (a random subset).
DISCRIMINATOR_IMAGES = 20000


class ClusterSamples:
    """Images (as uint8) and cluster ids kept while streaming, for the cluster montage.

    Args:
        n: images in the collection; shape: one image's shape (C, H, W).
    """

    def __init__(self, n: int, shape: tuple[int, ...]) -> None:
        self.every = max(1, -(-n * int(np.prod(shape)) // MONTAGE_BYTES))
        self.images: list[np.ndarray] = []
        self.ids: list[np.ndarray] = []
        self.seen = 0

    def add(self, images: np.ndarray, ids: np.ndarray) -> None:
        """images (B, C, H, W) float in [0, 1]; ids (B,)."""
        keep = (np.arange(self.seen, self.seen + len(images)) % self.every) == 0
        self.seen += len(images)
        self.images.append(to_uint8(images[keep]))
        self.ids.append(ids[keep])


class PairSample:
    """Keeps the (image, code) pairs of a fixed random subset of rows while streaming."""

    def __init__(self, n: int, seed: int = 0) -> None:
        keep = min(n, DISCRIMINATOR_IMAGES)
        self.rows = np.sort(np.random.default_rng(seed).choice(n, keep, replace=False))
        self.start, self.images, self.codes = 0, [], []

    def add(self, images: np.ndarray, codes: np.ndarray) -> None:
        """images (B, ...) and their codes (B, ...), the next rows of the stream."""
        lo, hi = np.searchsorted(self.rows, [self.start, self.start + len(images)])
        picked = self.rows[lo:hi] - self.start
        self.images.append(images[picked])
        self.codes.append(codes[picked])
        self.start += len(images)

    def score(self, n_values: int, device) -> dict:
        """The discriminator score of the kept pairs, plus ``n_images`` they number."""
        from discretae.evaluation.discriminator import discriminator_score

        images, codes = np.concatenate(self.images), np.concatenate(self.codes)
        return {
            **discriminator_score(images, codes, n_values, device=device),
            "n_images": len(images),
        }
