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
