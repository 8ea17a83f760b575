"""How good the codes are: clustering scores, code usage, reconstruction and bits.

Every function takes numpy arrays or torch tensors. Label -1 means "unlabeled":
``clustering_scores`` leaves those images out; the single scores take labels as given.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from discretae.core.errors import DiscretaeError


def _np(x, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as e:
        raise DiscretaeError(f"{name} is not an array: {e}") from None


def _ints(x, name: str) -> np.ndarray:
    a = _np(x, name)
    if a.dtype.kind == "b":
        a = a.astype(np.int64)
    if a.dtype.kind == "f" and np.isfinite(a).all() and (a == np.round(a)).all():
        a = a.astype(np.int64)
    if a.dtype.kind not in "iu":
        raise DiscretaeError(f"{name} has dtype {a.dtype}; expected integers")
    return a.astype(np.int64, copy=False)


def _pair(labels_true, labels_pred) -> tuple[np.ndarray, np.ndarray]:
    t, p = _ints(labels_true, "labels_true"), _ints(labels_pred, "labels_pred")
    if t.ndim != 1 or p.ndim != 1:
        raise DiscretaeError(f"labels must be 1-D, got shapes {t.shape} and {p.shape}")
    if len(t) != len(p):
        raise DiscretaeError(
            f"labels_true has {len(t)} entries but labels_pred has {len(p)}; expected equal"
        )
    if len(t) == 0:
        raise DiscretaeError("labels are empty; expected at least one image")
    return t, p


def contingency(labels_true, labels_pred) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts (n_classes, n_clusters) int64, with the class values and cluster ids it uses."""
    t, p = _pair(labels_true, labels_pred)
    classes, ti = np.unique(t, return_inverse=True)
    clusters, pi = np.unique(p, return_inverse=True)
    table = np.zeros((len(classes), len(clusters)), dtype=np.int64)
    np.add.at(table, (ti, pi), 1)
    return table, classes, clusters


def hungarian_match(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(class rows, cluster columns) of the one-to-one matching with the most images."""
    return linear_sum_assignment(table, maximize=True)


def purity(labels_true, labels_pred) -> float:
    """Fraction of images whose cluster's majority class is their own class."""
    table, _, _ = contingency(labels_true, labels_pred)
    return float(table.max(axis=0).sum() / table.sum())


def acc(labels_true, labels_pred) -> float:
    """Accuracy under the best one-to-one cluster-to-class map (Hungarian).

    With more clusters than classes, unmatched clusters count as wrong; with fewer,
    unmatched classes do.
    """
    table, _, _ = contingency(labels_true, labels_pred)
    rows, cols = hungarian_match(table)
    return float(table[rows, cols].sum() / table.sum())


def nmi(labels_true, labels_pred) -> float:
    """Normalized mutual information (scikit-learn, arithmetic normalization)."""
    return float(normalized_mutual_info_score(*_pair(labels_true, labels_pred)))


def ari(labels_true, labels_pred) -> float:
    """Adjusted Rand index (scikit-learn)."""
    return float(adjusted_rand_score(*_pair(labels_true, labels_pred)))


def clustering_scores(labels_true, labels_pred) -> dict:
    """purity, nmi, acc, ari over the labeled images (label >= 0), plus
    ``n_clusters_used`` (distinct ids over all images), ``n_scored`` and ``n_classes``."""
    t, p = _pair(labels_true, labels_pred)
    keep = t >= 0
    if not keep.any():
        raise DiscretaeError("no image has a label (all are -1); clustering scores need labels")
    tk, pk = t[keep], p[keep]
    return {
        "purity": purity(tk, pk),
        "nmi": nmi(tk, pk),
        "acc": acc(tk, pk),
        "ari": ari(tk, pk),
        "n_clusters_used": int(len(np.unique(p))),
        "n_classes": int(len(np.unique(tk))),
        "n_scored": int(keep.sum()),
    }


def _perplexity(counts: np.ndarray) -> float:
    """exp of the entropy of the usage distribution: K for uniform use of K codes."""
    p = counts[counts > 0] / counts.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def code_usage(codes, n_codes: int | None = None, *, binary: bool = False) -> dict:
    """Usage of a codebook.

    codes: integer indices of any shape (N, ...) in [0, n_codes). Returns ``n_codes``,
    ``counts`` (list of K ints over all positions), ``used``, ``perplexity`` and
    ``usage_fraction`` = used / K.

    With ``binary=True``, codes are (N, B) bits and each row is one of 2**B patterns:
    returns ``n_bits``, ``bit_means`` (B,), ``distinct_patterns`` (= ``used``),
    ``perplexity`` of the pattern distribution and ``usage_fraction`` = used / 2**B.
    """
    c = _ints(codes, "codes")
    if c.size == 0:
        raise DiscretaeError(f"codes have shape {c.shape}; expected at least one code")
    if binary:
        if n_codes is not None:
            raise DiscretaeError("pass n_codes or binary=True, not both")
        if c.ndim != 2 or c.min() < 0 or c.max() > 1:
            raise DiscretaeError(
                f"binary codes must be (N, B) of 0/1, got shape {c.shape} "
                f"with values in [{c.min()}, {c.max()}]"
            )
        packed = np.packbits(c.astype(np.uint8), axis=1)
        _, counts = np.unique(packed, axis=0, return_counts=True)
        return {
            "n_bits": int(c.shape[1]),
            "bit_means": c.mean(axis=0).tolist(),
            "distinct_patterns": int(len(counts)),
            "used": int(len(counts)),
            "perplexity": _perplexity(counts),
            "usage_fraction": float(len(counts) / 2.0 ** c.shape[1]),
        }
    if n_codes is None or int(n_codes) < 1:
        raise DiscretaeError(f"n_codes={n_codes!r}; expected the codebook size K >= 1")
    k = int(n_codes)
    if c.min() < 0 or c.max() >= k:
        raise DiscretaeError(f"codes hold values in [{c.min()}, {c.max()}]; expected 0..{k - 1}")
    counts = np.bincount(c.ravel(), minlength=k)
    used = int((counts > 0).sum())
    return {
        "n_codes": k,
        "counts": counts.tolist(),
        "used": used,
        "perplexity": _perplexity(counts),
        "usage_fraction": used / k,
    }


def mse(x, x_hat) -> float:
    """Mean squared error over every element; shapes must match."""
    a, b = _np(x, "x"), _np(x_hat, "x_hat")
    if a.shape != b.shape:
        raise DiscretaeError(f"x has shape {a.shape} but x_hat has {b.shape}; expected equal")
    if a.size == 0:
        raise DiscretaeError("x is empty")
    return float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))


def psnr_from_mse(mse_value: float, data_range: float = 1.0) -> float:
    """10 log10(range^2 / MSE) in dB; inf when MSE is 0."""
    if mse_value < 0:
        raise DiscretaeError(f"mse={mse_value} is negative")
    return math.inf if mse_value == 0 else float(10 * math.log10(data_range**2 / mse_value))


def psnr(x, x_hat, data_range: float = 1.0) -> float:
    """PSNR in dB of the whole set (from its overall MSE, not a mean of per-image PSNRs)."""
    return psnr_from_mse(mse(x, x_hat), data_range)


PSNR_CAP = 100.0  # dB given to an image decoded exactly (its MSE is 0)


def psnr_per_image(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a, b (N, ...) uint8 -> (N,) each image's PSNR in dB over all its pixels and
    channels, capped at ``PSNR_CAP``. The mean of it is the PSNR that codec comparisons
    (CompressAI's, this project's benchmarks) report."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim < 2:
        raise DiscretaeError(f"images of shape {a.shape} and {b.shape}; expected equal (N, ...)")
    d = a.reshape(len(a), -1).astype(np.float64) - b.reshape(len(b), -1)
    mse_each = (d * d).mean(1)
    with np.errstate(divide="ignore"):
        p = 10 * np.log10(255.0**2 / mse_each)
    return np.minimum(p, PSNR_CAP)


def raw_bits_per_image(code_shape: tuple[int, ...], n_codes: int) -> int:
    """Bits to store one image's code as fixed-width integers: positions * ceil(log2 K).

    code_shape: the per-image code shape, () for one index. Binary codes of B bits are
    code_shape (B,) with n_codes=2, giving B bits.
    """
    if int(n_codes) < 1:
        raise DiscretaeError(f"n_codes={n_codes}; expected >= 1")
    return int(math.prod(code_shape)) * math.ceil(math.log2(int(n_codes)))


def empirical_entropy_bits_per_image(codes) -> float:
    """An estimate of the bits per image an entropy coder could reach on these codes.

    codes: (N, ...) integers. The sum over code positions of each position's empirical
    (plug-in) entropy in bits: the rate of an ideal coder with one static model per
    position, not counting the cost of sending the models. Optimistic for small N.
    """
    c = _ints(codes, "codes")
    if c.ndim == 0 or c.shape[0] == 0:
        raise DiscretaeError(f"codes have shape {c.shape}; expected (N, ...) with N >= 1")
    flat = c.reshape(c.shape[0], -1)
    total = 0.0
    for j in range(flat.shape[1]):
        _, counts = np.unique(flat[:, j], return_counts=True)
        p = counts / counts.sum()
        total -= float((p * np.log2(p)).sum())
    return total
