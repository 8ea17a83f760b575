"""k-means with k-means++ seeding and Lloyd iterations on the nearest-code kernel.

Used to initialise VQ codebooks and to turn binary or grid codes into cluster ids.
Every assignment step is one ``nearest_code_with_sums`` pass, whose per-code sums and
counts are exactly what the update step needs. Runs where the data lives: a torch
tensor on a GPU is clustered on that GPU.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from discretae.core.checks import check_int
from discretae.core.errors import DiscretaeError, NotFittedError
from discretae.kernels import nearest_code, nearest_code_with_sums


def _as_matrix(X, what: str = "X") -> tuple[torch.Tensor, bool]:
    """X: (N, D) numpy array or tensor -> (float32 tensor, whether the input was numpy)."""
    is_numpy = not isinstance(X, torch.Tensor)
    if is_numpy:
        arr = np.asarray(X)
        if arr.dtype.kind not in "biuf":
            raise DiscretaeError(f"{what} must be a numeric array, got dtype {arr.dtype}")
        t = torch.from_numpy(arr.astype(np.float32))
    else:
        t = X.detach()
    if t.ndim != 2:
        raise DiscretaeError(
            f"{what} must be 2-D (n_samples, n_features), got shape {tuple(t.shape)}"
        )
    if t.is_complex():
        raise DiscretaeError(f"{what} must be real-valued, got dtype {t.dtype}")
    t = t.to(torch.float32)
    if t.shape[1] == 0:
        raise DiscretaeError(f"{what} has no features: shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise DiscretaeError(f"{what} contains NaN or infinite values")
    return t.contiguous(), is_numpy


def _kmeans_plus_plus(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """Greedy k-means++: each new center is the best of a few D^2-sampled candidates.

    x: (N, D) float32 -> centers (k, D).
    """
    n = x.shape[0]
    trials = 2 + int(math.log(k))
    x_sq = (x * x).sum(1)
    first = int(torch.randint(n, (1,), generator=gen, device=x.device))
    centers = [x[first]]
    closest = (x - x[first]).pow(2).sum(1)
    for _ in range(1, k):
        if float(closest.sum()) > 0:
            cand = torch.multinomial(closest, trials, replacement=True, generator=gen)
        else:  # every point coincides with a center: any pick is as good
            cand = torch.randint(n, (trials,), generator=gen, device=x.device)
        c = x[cand]
        d = (x_sq[None, :] + (c * c).sum(1, keepdim=True) - 2.0 * c @ x.T).clamp_(min=0.0)
        d = torch.minimum(d, closest[None, :])
        best = int(d.sum(1).argmin())
        centers.append(c[best])
        closest = d[best]
    return torch.stack(centers)


def _lloyd(
    x: torch.Tensor, centers: torch.Tensor, max_iter: int, tol: float
) -> tuple[torch.Tensor, int]:
    """Lloyd iterations from ``centers`` (k, D). Returns (centers, iterations run)."""
    for it in range(1, max_iter + 1):
        _, sq_dist, sums, counts = nearest_code_with_sums(x, centers)
        new = sums / counts.clamp(min=1.0).unsqueeze(1)
        empty = torch.nonzero(counts == 0).squeeze(1)
        if empty.numel():
            # an empty cluster takes the points worst served by the current centers
            far = sq_dist.topk(empty.numel()).indices
            new[empty] = x[far]
        shift = float((new - centers).pow(2).sum())
        centers = new
        if shift <= tol:
            return centers, it
    return centers, max_iter


class KMeans:
    """k-means clustering (k-means++ seeding, Lloyd iterations on ``nearest_code``).

    Args:
        n_clusters: number of clusters k >= 1.
        n_init: independent seedings; the run with the lowest inertia is kept.
        max_iter: most Lloyd iterations per run.
        tol: stop when the squared center shift is at most ``tol`` times the mean
            per-feature variance of X (scikit-learn's convention).
        random_state: seed of the k-means++ sampling.

    Fitted attributes follow the input: numpy in, numpy out; a tensor in gives tensors
    on its device. ``cluster_centers_`` (k, D) float32, ``labels_`` (N,) int64,
    ``inertia_`` (float, the sum of squared distances to the nearest center),
    ``n_iter_``.
    """

    def __init__(
        self,
        n_clusters: int = 8,
        *,
        n_init: int = 3,
        max_iter: int = 100,
        tol: float = 1e-4,
        random_state: int | None = 0,
    ) -> None:
        self.n_clusters = n_clusters
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state

    def __repr__(self) -> str:
        return f"KMeans(n_clusters={self.n_clusters}, n_init={self.n_init})"

    def _check_params(self, n: int) -> None:
        for name in ("n_clusters", "n_init", "max_iter"):
            v = getattr(self, name)
            check_int(name, int(v) if isinstance(v, np.integer) else v)
        if not self.tol >= 0:
            raise DiscretaeError(f"tol must be >= 0, got {self.tol!r}")
        if n < self.n_clusters:
            raise DiscretaeError(f"n_samples={n} should be >= n_clusters={self.n_clusters}.")

    def fit(self, X, y=None) -> KMeans:
        """X: (N, D) numpy array or tensor. y is ignored."""
        x, is_numpy = _as_matrix(X)
        self._check_params(x.shape[0])
        seed = self.random_state
        if seed is None:
            seed = int(torch.randint(2**31 - 1, (1,)))
        gen = torch.Generator(device=x.device).manual_seed(int(seed))
        tol = self.tol * float(x.var(0, unbiased=False).mean()) if x.shape[0] > 1 else 0.0
        best = None
        for _ in range(self.n_init):
            centers = _kmeans_plus_plus(x, self.n_clusters, gen)
            centers, n_iter = _lloyd(x, centers, self.max_iter, tol)
            labels, sq_dist = nearest_code(x, centers)
            inertia = float(sq_dist.double().sum())
            if best is None or inertia < best[0]:
                best = (inertia, centers, labels, n_iter)
        inertia, centers, labels, n_iter = best
        self._centers = centers
        self.inertia_ = inertia
        self.n_iter_ = n_iter
        self.n_features_in_ = x.shape[1]
        self.cluster_centers_ = centers.cpu().numpy() if is_numpy else centers
        self.labels_ = labels.cpu().numpy() if is_numpy else labels
        return self

    def predict(self, X):
        """X: (N, D) -> cluster ids (N,) int64, numpy or tensor like X."""
        if not hasattr(self, "_centers"):
            raise NotFittedError("This KMeans is not fitted yet; call fit first.")
        x, is_numpy = _as_matrix(X)
        if x.shape[1] != self.n_features_in_:
            raise DiscretaeError(
                f"X has {x.shape[1]} features, but this KMeans was fitted on {self.n_features_in_}"
            )
        labels, _ = nearest_code(x, self._centers.to(x.device))
        return labels.cpu().numpy() if is_numpy else labels

    def fit_predict(self, X, y=None):
        """Fit on X and return its cluster ids (N,) int64."""
        return self.fit(X).labels_

    @classmethod
    def from_centers(cls, centers: torch.Tensor, **params) -> KMeans:
        """A fitted KMeans that predicts with given centers (k, D), e.g. read from a model file."""
        km = cls(n_clusters=int(centers.shape[0]), **params)
        km._centers = centers.to(torch.float32)
        km.cluster_centers_ = km._centers
        km.n_features_in_ = int(centers.shape[1])
        return km
