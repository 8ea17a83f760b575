"""Chunked torch path: the CPU backend, and the reference the Triton kernel is checked against.

Rows of ``x`` go through in chunks and codes in tiles. Each tile of distances
``||c||^2 - 2 c x^T`` (codes x rows) lands in one reused buffer, so extra memory stays
at ``TILE_FLOATS`` however large N and K are. Torch's row-wise min-with-index is slow,
so the tile is reduced in two steps:

1. the minimum over each group of ``S`` consecutive codes: a vertical ``amin`` that
   runs at memory speed;
2. the first group holding the row minimum, and the first code at the minimum inside
   that group: small reductions over K/S groups and S codes.

First-minimum at both steps sends exact float32 ties to the lowest index. In ``exact``
mode the second-best distance comes from the same small tensors, and a row whose best
two codes lie within twice the float32 error bound is decided again in float64.
"""

from __future__ import annotations

import math

import torch

from ._common import error_bound, recheck_rows

# floats in one distance tile: 16 MiB, measured best on a 2-core AVX-512 CPU (L3 32 MiB)
TILE_FLOATS = 1 << 22
# codes per tile: bounds the slice of the codebook each GEMM streams through cache
TILE_CODES = 2048
MAX_ROWS = 8192


def _plan(k: int) -> tuple[int, int, int, int]:
    """Group size S, padded K, codes per tile and rows per chunk for a codebook of K rows."""
    s = min(64, 1 << (math.isqrt(k).bit_length() - 1))  # power of two near sqrt(K)
    kp = -(-k // s) * s
    kt = min(kp, max(s, TILE_CODES // s * s))
    rows = max(64, min(MAX_ROWS, TILE_FLOATS // kt))
    return s, kp, kt, rows


def _padded_codebook(c: torch.Tensor, kp: int) -> tuple[torch.Tensor, torch.Tensor]:
    """c: (K, D) float32 -> (Kp, D) float32 codes and (Kp, 1) float32 squared norms.

    Padding codes and codes with a non-finite entry get norm +inf and zero entries, so
    their distance is +inf for every finite row: they are never the nearest.
    """
    k, d = c.shape
    finite = torch.isfinite(c).all(1, keepdim=True)
    cp = torch.zeros(kp, d, dtype=torch.float32, device=c.device)
    cp[:k] = torch.where(finite, c, 0.0)
    cc = torch.full((kp, 1), math.inf, dtype=torch.float32, device=c.device)
    c64 = cp[:k].double()
    cc[:k] = (c64 * c64).sum(1, keepdim=True).float().masked_fill_(~finite, math.inf)
    return cp, cc


def nearest_code_torch(
    x: torch.Tensor, codebook: torch.Tensor, exact: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """x: (N, D), codebook: (K, D), any float dtype -> (indices int64 (N,), sq_dist fp32 (N,))."""
    n = x.shape[0]
    k, d = codebook.shape
    dev = x.device
    indices = torch.empty(n, dtype=torch.int64, device=dev)
    sq_dist = torch.empty(n, dtype=torch.float32, device=dev)
    if n == 0:
        return indices, sq_dist
    s, kp, kt, rows = _plan(k)
    c32 = codebook.to(torch.float32)
    cp, cc = _padded_codebook(c32, kp)
    tiles = [(j, min(j + kt, kp)) for j in range(0, kp, kt)]
    g_tile = kt // s
    buf = torch.empty(kt * min(rows, n), dtype=torch.float32, device=dev)
    if exact:
        v1_all = torch.empty(n, dtype=torch.float32, device=dev)
        v2_all = torch.empty(n, dtype=torch.float32, device=dev)
        x_norm = torch.empty(n, dtype=torch.float32, device=dev)
    for start in range(0, n, rows):
        xs = x[start : start + rows].to(torch.float32).contiguous()
        m = xs.shape[0]
        xt = xs.T
        gmin = torch.empty(kp // s, m, dtype=torch.float32, device=dev)
        if len(tiles) > 1:
            stash = torch.empty(len(tiles), s, m, dtype=torch.float32, device=dev)
        for t, (j0, j1) in enumerate(tiles):
            dist = torch.addmm(
                cc[j0:j1], cp[j0:j1], xt, alpha=-2.0, out=buf[: (j1 - j0) * m].view(j1 - j0, m)
            ).view(-1, s, m)
            gslice = gmin[j0 // s : j1 // s]
            torch.amin(dist, 1, out=gslice)
            if len(tiles) > 1:
                # keep the values of this tile's best group: the overall best group is one
                tbest = gslice.argmin(0).view(1, 1, m).expand(1, s, m)
                torch.gather(dist, 0, tbest, out=stash[t : t + 1])
        v1, g1 = gmin.min(0)
        if len(tiles) > 1:
            src, gsel = stash, g1 // g_tile
        else:
            src, gsel = dist, g1
        within = src.gather(0, gsel.view(1, 1, m).expand(1, s, m)).view(s, m)
        s1 = within.argmin(0)
        idx = torch.add(s1, g1, alpha=s).clamp_(max=k - 1)
        indices[start : start + m] = idx
        torch.sum(torch.sub(xs, c32[idx]).square_(), 1, out=sq_dist[start : start + m])
        if exact:
            v1_all[start : start + m] = v1
            gmin.scatter_(0, g1.view(1, m), math.inf)
            within.scatter_(0, s1.view(1, m), math.inf)
            torch.minimum(gmin.amin(0), within.amin(0), out=v2_all[start : start + m])
            torch.linalg.vector_norm(xs, dim=1, out=x_norm[start : start + m])
    if exact and k > 1:
        c_norm_max = float(cc[:k].masked_fill(cc[:k].isinf(), 0.0).max().sqrt())
        bound = error_bound(x_norm, c_norm_max, d)
        # a second code within 2*bound of the best means float32 cannot decide the row
        # rows without a finite best (NaN rows, all codes non-finite) stay as they are
        undecided = (v2_all <= v1_all + 2.0 * bound) & (v1_all + bound).isfinite()
        rows_left = torch.nonzero(undecided)
        recheck_rows(x, codebook, rows_left.squeeze(1), indices, sq_dist)
    return indices, sq_dist
