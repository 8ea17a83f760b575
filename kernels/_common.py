"""Input checks and the exact recheck shared by every nearest-code backend."""

from __future__ import annotations

import math

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
PRECISIONS = ("exact", "fast")
BACKENDS = ("auto", "torch", "triton")

# unit roundoff of float32
U32 = 2.0**-24
U64 = 2.0**-53


def check_inputs(x: torch.Tensor, codebook: torch.Tensor, precision: str, backend: str) -> None:
    """Raise ValueError naming what was given when the inputs break the contract."""
    if not isinstance(x, torch.Tensor) or not isinstance(codebook, torch.Tensor):
        raise ValueError(
            f"x and codebook must be torch tensors, got {type(x).__name__} "
            f"and {type(codebook).__name__}"
        )
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not one of {PRECISIONS}")
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not one of {BACKENDS}")
    if codebook.ndim != 2:
        raise ValueError(f"codebook must be 2-D (K, D), got shape {tuple(codebook.shape)}")
    if x.ndim < 1:
        raise ValueError(f"x must have at least 1 dimension (..., D), got shape {tuple(x.shape)}")
    k, d = codebook.shape
    if k == 0:
        raise ValueError(f"codebook must have K >= 1 rows, got shape {tuple(codebook.shape)}")
    if d == 0:
        raise ValueError(f"codebook must have D >= 1 columns, got shape {tuple(codebook.shape)}")
    if x.shape[-1] != d:
        raise ValueError(
            f"x has D={x.shape[-1]} (shape {tuple(x.shape)}) but codebook has D={d} "
            f"(shape {tuple(codebook.shape)})"
        )
    for name, t in (("x", x), ("codebook", codebook)):
        if t.dtype not in FLOAT_DTYPES:
            raise ValueError(f"{name} has dtype {t.dtype}; expected float32, float16 or bfloat16")
    if x.device != codebook.device:
        raise ValueError(f"x is on {x.device} but codebook is on {codebook.device}")


def error_bound(x_norm: torch.Tensor, c_norm_max: float, d: int) -> torch.Tensor:
    """Upper bound on the float32 error of ``||c||^2 - 2 x.c`` for every code.

    Any summation order of a D-term float32 dot product errs by at most
    gamma_D * sum|x_i c_i| <= gamma_D ||x|| ||c|| (Higham, Thm 3.1); the code norm
    and the final subtraction add a few more roundings. The factor 1.25 is margin.
    """
    gamma = (d + 4) * U32 / (1.0 - (d + 4) * U32)
    return 1.25 * gamma * (2.0 * x_norm * c_norm_max + c_norm_max * c_norm_max) + 1e-30


def recheck_rows(
    x: torch.Tensor,
    codebook: torch.Tensor,
    rows: torch.Tensor,
    indices: torch.Tensor,
    sq_dist: torch.Tensor,
) -> None:
    """Decide ``rows`` of ``x`` in float64 and write the result into indices/sq_dist in place.

    x: (N, D), codebook: (K, D), rows: (R,) int64 row numbers, indices: (N,) int64,
    sq_dist: (N,) float32. Candidates come from a float64 expansion of the distance; the
    final choice uses direct differences sum((x - c)^2) in float64, ties to the lowest
    index. Codes with a non-finite entry are never chosen; a row with no finite
    candidate (a NaN row) keeps what it had.
    """
    if rows.numel() == 0:
        return
    k, d = codebook.shape
    c64 = codebook.to(torch.float64)
    finite = c64.abs().amax(1).isfinite()  # NaN propagates through amax
    c64 = torch.where(finite.unsqueeze(1), c64, 0.0)
    cc = (c64 * c64).sum(1).masked_fill_(~finite, math.inf)
    c_norm_max = float(cc.masked_fill(~finite, 0.0).max().sqrt())
    # float64 distance rows per step: 2 Mi doubles = 16 MiB
    step = max(1, min(rows.numel(), (1 << 21) // k))
    for start in range(0, rows.numel(), step):
        r = rows[start : start + step]
        xr = x[r].to(torch.float64)
        dist = torch.addmm(cc, xr, c64.T, alpha=-2.0)  # (m, K): ||c||^2 - 2 x.c
        best = dist.amin(1, keepdim=True)
        x_norm = torch.linalg.vector_norm(xr, dim=1, keepdim=True)
        margin = 2.0 * _error_bound64(x_norm, c_norm_max, d)
        pr, pk = torch.nonzero(dist <= best + margin, as_tuple=True)
        exact = torch.empty(pr.numel(), dtype=torch.float64, device=x.device)
        # bounded pieces: with many tied codes there can be m * K candidate pairs
        pstep = max(1, (1 << 20) // d)
        for p0 in range(0, pr.numel(), pstep):
            diff = xr[pr[p0 : p0 + pstep]] - c64[pk[p0 : p0 + pstep]]
            torch.sum(diff.square_(), 1, out=exact[p0 : p0 + pstep])
        exact.masked_fill_(~finite[pk], math.inf)
        m = len(r)
        row_min = torch.full((m,), math.inf, dtype=torch.float64, device=x.device)
        row_min.scatter_reduce_(0, pr, exact, reduce="amin")
        at_min = (exact == row_min[pr]) & ~row_min[pr].isnan()
        pick = torch.full((m,), k, dtype=torch.int64, device=x.device)
        pick.scatter_reduce_(0, pr[at_min], pk[at_min], reduce="amin")
        done = pick < k
        indices[r[done]] = pick[done]
        sq_dist[r[done]] = row_min[done].to(sq_dist.dtype)


def _error_bound64(x_norm: torch.Tensor, c_norm_max: float, d: int) -> torch.Tensor:
    """``error_bound`` for a float64 evaluation of ``||c||^2 - 2 x.c``."""
    gamma = (d + 4) * U64 / (1.0 - (d + 4) * U64)
    return 1.25 * gamma * (2.0 * x_norm * c_norm_max + c_norm_max * c_norm_max) + 1e-300


# ------------------------------------------------------------------ top-k (nearest_codes)
def direct_slack(d: int) -> float:
    """Relative error bound of a float64 ``sum((x - c)^2)`` over D terms, with margin.

    The float64 reference ranks codes by direct differences, whose value is within this
    factor of the true squared distance; the top-k margins add it so that they cover the
    reference's own rounding as well as the first pass's.
    """
    return 1.25 * (d + 2) * U64 / (1.0 - (d + 2) * U64)


def topk_margin(kth, bound, xx, d: int):
    """How close two first-pass values may lie before their float64 order is in doubt.

    kth: the k-th smallest first-pass value ``||c||^2 - 2 x.c`` of each row; bound: the
    pass's error bound per code; xx: ``||x||^2``. Two codes whose first-pass values differ
    by more than this are in the same order in the float64 reference (``nearest_codes``
    proves it in ``kernels/topk.py``). Non-finite ``kth`` gives a non-finite margin.
    """
    return 2.0 * bound + 3.0 * direct_slack(d) * (kth.abs() + bound + xx)


def _finite_codes(codebook: torch.Tensor):
    """float64 codebook with non-finite rows zeroed, their mask, norms (+inf there), max norm."""
    c64 = codebook.to(torch.float64)
    finite = c64.abs().amax(1).isfinite()
    c64 = torch.where(finite.unsqueeze(1), c64, 0.0)
    cc = (c64 * c64).sum(1).masked_fill_(~finite, math.inf)
    return c64, finite, cc, float(cc.masked_fill(~finite, 0.0).max().sqrt())


def _direct(xr, c64, finite, pr, pk) -> torch.Tensor:
    """float64 ``sum((x[pr] - c[pk])^2)`` per pair, +inf for non-finite codes; bounded pieces."""
    out = torch.empty(pr.numel(), dtype=torch.float64, device=xr.device)
    step = max(1, (1 << 20) // c64.shape[1])
    for p0 in range(0, pr.numel(), step):
        diff = xr[pr[p0 : p0 + step]] - c64[pk[p0 : p0 + step]]
        torch.sum(diff.square_(), 1, out=out[p0 : p0 + step])
    return out.masked_fill_(~finite[pk], math.inf)


def rerank_rows(x, codebook, rows, cand, k):
    """Top-k of ``rows`` of x among candidate codes ``cand`` (R, C), by float64 direct differences.

    Candidates ``>= K`` stand for no code (padding) and are never chosen unless a row
    has fewer than k others. Ties go to the lowest index. Returns indices (R, k) int64 and
    squared distances (R, k) float64.
    """
    k_codes = codebook.shape[0]
    c64, finite, _, _ = _finite_codes(codebook)
    cand, _ = cand.sort(1)  # index order, so a stable sort by distance breaks ties low
    r_n, c_n = cand.shape
    pk = cand.clamp(max=k_codes - 1)
    xr = x[rows].to(torch.float64)
    dist = torch.empty(r_n, c_n, dtype=torch.float64, device=x.device)
    step = max(1, (1 << 20) // (c_n * c64.shape[1]))
    for r0 in range(0, r_n, step):  # each row broadcast against its candidates: no copies of x
        diff = xr[r0 : r0 + step].unsqueeze(1) - c64[pk[r0 : r0 + step]]
        torch.sum(diff.square_(), 2, out=dist[r0 : r0 + step])
    dist.masked_fill_(~finite[pk] | (cand >= k_codes), math.inf)
    order = dist.argsort(dim=1, stable=True)[:, :k]
    return cand.gather(1, order), dist.gather(1, order)


def topk_rows64(x, codebook, rows, k):
    """Top-k of ``rows`` of x over the whole codebook in float64: (R, k) int64, (R, k) float64.

    A float64 expansion ``||c||^2 - 2 x.c`` keeps every code within its error margin of
    the k-th value; those are ranked by direct differences, ties to the lowest index.
    A row without k comparable values (one holding NaN) gets indices 0..k-1 and NaN.
    """
    k_codes, d = codebook.shape
    c64, finite, cc, c_norm_max = _finite_codes(codebook)
    dev = x.device
    idx = torch.arange(k, device=dev).repeat(rows.numel(), 1)
    dist = torch.full((rows.numel(), k), math.nan, dtype=torch.float64, device=dev)
    step = max(1, min(rows.numel(), (1 << 21) // k_codes))
    for start in range(0, rows.numel(), step):
        xr = x[rows[start : start + step]].to(torch.float64)
        m = xr.shape[0]
        expansion = torch.addmm(cc, xr, c64.T, alpha=-2.0)  # (m, K)
        kth = expansion.topk(k, 1, largest=False).values[:, -1:]
        x_norm = torch.linalg.vector_norm(xr, dim=1, keepdim=True)
        bound = _error_bound64(x_norm, c_norm_max, d)
        keep = expansion <= kth + topk_margin(kth, bound, x_norm.square(), d)
        pr, pk = torch.nonzero(keep, as_tuple=True)  # row-major: index order inside a row
        exact = _direct(xr, c64, finite, pr, pk)
        order = exact.argsort(stable=True)
        order = order[pr[order].argsort(stable=True)]  # by row, then distance, then index
        counts = torch.bincount(pr, minlength=m)
        ok = counts >= k
        first = (counts.cumsum(0) - counts)[ok]
        pick = order[first.unsqueeze(1) + torch.arange(k, device=dev)]
        out = torch.nonzero(ok).squeeze(1) + start
        idx[out], dist[out] = pk[pick], exact[pick]
    return idx, dist
