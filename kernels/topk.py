"""The k nearest codes per row: the chunked torch path of ``nearest_codes`` and its exact finish.

First pass (float32, bounded memory). Rows go through in chunks and codes in tiles of
S * G codes, one GEMM per tile, ``[x, 1] @ [-2 c, ||c||^2]^T`` = ``||c||^2 - 2 x.c``, as in
``torch_backend``. Each tile is cut to a few candidates per row without sorting it:

- grouped tiles (G groups of S codes, G >= 2 L): one vertical ``amin`` gives the group
  minima; the L lowest groups are gathered and each gives its two smallest codes; the
  third smallest of those groups and the L-th group minimum bound every code left out
  from below (``theta``). A row whose k-th group minimum plus the margin reaches
  ``theta`` (three near codes in one group) takes ``topk`` over its whole tile instead;
- other tiles: ``topk`` over the tile, ``theta`` = the largest value kept.

Finish (``settle``). With v_1 <= .. <= v_k the row's k lowest candidate values and
``next`` = min(v_{k+1}, theta), any code left out has a value >= ``next``. Every
first-pass value is within ``bound`` of ``||c||^2 - 2 x.c``, and the float64 reference
``sum((x - c)^2)`` is within a relative ``direct_slack`` of ``||x - c||^2``. So when the
gaps v_1 -> v_2 -> .. -> v_k -> next all exceed ``topk_margin`` (2 bound plus the
reference's slack), the reference ranks these k codes first and in this order: the row
is done in float32. Otherwise, if ``theta > v_k + margin``, every code the reference can
put in its top k is a candidate (its value is <= v_k + margin), and the candidates are
ranked again by float64 direct differences (``rerank_rows``); if not, the row is redone
over the whole codebook in float64 (``topk_rows64``). Ties go to the lowest index.
"""

from __future__ import annotations

import math

import torch

from ._common import error_bound, rerank_rows, topk_margin, topk_rows64
from .torch_backend import code_tiles, tile_gemms

# floats in one distance tile per torch thread, up to TILE_FLOATS_MAX: 4x torch_backend's,
# since the per-tile reductions here are more calls (measured faster at 1 << 21 on 2 cores)
TILE_FLOATS = 1 << 21
TILE_FLOATS_MAX = 1 << 23
TILE_CODES = 8192
MAX_ROWS = 8192
# groups per grouped tile: at least GROUPS, and at least GROUPS_PER_KEPT L rounded up to
# a power of two (L = candidates kept per row, a few more than k), so that three of a
# row's nearest codes rarely share a group (which sends the row to a topk over its whole
# tile: 28% of rows at k = 50 with 256 groups, 1024 groups cut that call from 2.4 s to
# 1.5-1.8 s at (65536, 8192, 64) on 2 threads). A tile is grouped when it has >= 2 codes
# a group and groups >= 2 L.
GROUPS = 256
GROUPS_PER_KEPT = 16
# floats of per-row candidates held between finishes
BATCH_FLOATS = 1 << 20


def kept(k: int, k_codes: int) -> int:
    """L: first-pass candidates per row, k plus room for values within the margin of v_k."""
    return min(k_codes, k + max(4, k // 4))


def plan(k_codes: int, k: int) -> dict:
    """Tile shape and candidates per tile for K codes and top-k."""
    n_tiles = -(-k_codes // TILE_CODES)
    per_tile = -(-k_codes // n_tiles)
    lg = kept(k, k_codes)
    groups = max(GROUPS, 1 << (GROUPS_PER_KEPT * lg - 1).bit_length())
    s = -(-per_tile // groups)
    grouped = s >= 2 and groups >= 2 * lg
    g = groups if grouped else per_tile
    s = s if grouped else 1
    kt = s * g
    per = 2 * lg if grouped else min(lg, kt)
    tile_floats = min(TILE_FLOATS * torch.get_num_threads(), TILE_FLOATS_MAX)
    rows = max(1, min(MAX_ROWS, tile_floats // kt))
    return {"s": s, "g": g, "kt": kt, "n_tiles": n_tiles, "lg": lg, "per": per, "rows": rows}


def _tile_candidates(dist, p, k, margin_of):
    """(m, Kt) first-pass values -> candidate values, tile-local codes (m, per), theta (m,)."""
    m, kt = dist.shape
    s, g, lg, per = p["s"], p["g"], p["lg"], p["per"]
    if s == 1:
        vals, codes = torch.topk(dist, per, 1, largest=False, sorted=False)
        theta = vals.amax(1) if per < kt else torch.full((m,), math.inf, device=dist.device)
        return vals, codes, theta
    d3 = dist.view(m, s, g)
    gv, gs = torch.topk(torch.amin(d3, 1), lg, 1, largest=False, sorted=True)
    blk = torch.gather(d3, 2, gs.unsqueeze(1).expand(m, s, lg))  # (m, S, L)
    w1 = blk.min(1, keepdim=True).indices  # min with indices: far faster than argmin here
    blk.scatter_(1, w1, math.inf)
    v2, w2 = blk.min(1, keepdim=True)
    blk.scatter_(1, w2, math.inf)
    theta = torch.minimum(blk.amin((1, 2)), gv[:, -1])
    vals = torch.cat([gv, v2.squeeze(1)], 1)
    codes = torch.cat([gs * s + w1.squeeze(1), gs * s + w2.squeeze(1)], 1)
    # three near codes in one group: the two kept may miss one, so sort the whole tile row
    redo = torch.nonzero(~(theta > gv[:, k - 1] + margin_of(gv[:, k - 1]))).squeeze(1)
    if redo.numel():
        rv, col = torch.topk(dist[redo], per, 1, largest=False, sorted=False)
        # column j G + i holds code i S + j
        vals[redo], codes[redo], theta[redo] = rv, col % g * s + col // g, rv.amax(1)
    return vals, codes, theta


def settle(xb, codebook, cand_v, cand_i, theta, x_norm, bound, k, exact, out_i, out_d):
    """Finish one batch of rows from its first-pass candidates; see the module docstring.

    xb: (m, D) rows of x; cand_v, cand_i: (m, C) first-pass values ``||c||^2 - 2 x.c``
    and their codes (>= K: padding); theta: (m,) a lower bound on every value left out;
    x_norm: (m,) float32 ``||x||``; bound: (m,) the first pass's error bound per code.
    Writes (m, k) indices and float32 squared distances into out_i / out_d and returns
    the local rows that ``topk_rows64`` must still decide.
    """
    c = cand_v.shape[1]
    top_v, top_p = torch.topk(cand_v, min(k + 1, c), 1, largest=False, sorted=True)
    vk = top_v[:, k - 1]
    xx = x_norm * x_norm
    margin = topk_margin(vk, bound, xx, xb.shape[1])
    out_i.copy_(cand_i.gather(1, top_p[:, :k]))
    torch.add(top_v[:, :k], xx.unsqueeze(1), out=out_d).clamp_(min=0.0)
    if not exact:
        return torch.nonzero(~vk.isfinite()).squeeze(1)
    nxt = theta if c == k else torch.minimum(top_v[:, k], theta)
    seq = torch.cat([top_v[:, :k], nxt.unsqueeze(1)], 1)
    clear = (seq.diff(dim=1) > margin.unsqueeze(1)).all(1)  # NaN compares False
    reach = vk + margin  # the largest value the reference's top k can hold
    inside = theta > reach
    amb = torch.nonzero(~clear & inside).squeeze(1)
    if amb.numel():
        # only candidates within v_k + margin can reach the reference's top k: rerank those
        av = cand_v[amb]
        width = int((av <= reach[amb].unsqueeze(1)).sum(1).max())  # >= k: v_1 .. v_k are within
        near = torch.topk(av, width, 1, largest=False, sorted=False).indices
        ri, rd = rerank_rows(xb, codebook, amb, cand_i[amb].gather(1, near), k)
        out_i[amb], out_d[amb] = ri, rd.to(out_d.dtype)
    return torch.nonzero(~clear & ~inside).squeeze(1)


def nearest_codes_torch(x, codebook, k: int, exact: bool):
    """x: (N, D), codebook: (K, D), any float dtype, 1 <= k <= K ->
    (indices (N, k) int64, sq_dist (N, k) float32), nearest first."""
    n, d = x.shape
    k_codes = codebook.shape[0]
    dev = x.device
    f32 = {"dtype": torch.float32, "device": dev}
    indices = torch.empty(n, k, dtype=torch.int64, device=dev)
    sq_dist = torch.empty(n, k, **f32)
    if n == 0:
        return indices, sq_dist
    p = plan(k_codes, k)
    rows, kt, per, n_tiles = min(p["rows"], n), p["kt"], p["per"], p["n_tiles"]
    width = n_tiles * per
    batch = min(n, max(rows, BATCH_FLOATS // width // rows * rows))
    c32 = codebook.to(torch.float32)
    c_norm_max = float(torch.linalg.vector_norm(c32.nan_to_num(0.0, 0.0, 0.0), dim=1).max())
    gemms = tile_gemms(code_tiles(c32, p["s"], p["g"], n_tiles), rows)
    xa = torch.ones(rows, d + 1, **f32)
    cand_v = torch.empty(batch, width, **f32)
    cand_i = torch.empty(batch, width, dtype=torch.int64, device=dev)
    theta = torch.empty(batch, **f32)
    x_norm = torch.empty(batch, **f32)
    redo = []
    for b0 in range(0, n, batch):
        mb = min(batch, n - b0)
        for r0 in range(0, mb, rows):
            r1 = min(mb, r0 + rows)
            xs = xa[: r1 - r0, :d]
            xs.copy_(x[b0 + r0 : b0 + r1])
            xn = torch.linalg.vector_norm(xs, dim=1, out=x_norm[r0:r1])
            bound = error_bound(xn, c_norm_max, d)

            def margin_of(vk, bound=bound, xn=xn):
                return topk_margin(vk, bound, xn * xn, d)

            theta[r0:r1] = math.inf
            for t, gemm in enumerate(gemms):
                v, c, th = _tile_candidates(gemm(xa[: r1 - r0]), p, k, margin_of)
                cand_v[r0:r1, t * per : (t + 1) * per] = v
                torch.add(c, t * kt, out=cand_i[r0:r1, t * per : (t + 1) * per])
                torch.minimum(theta[r0:r1], th, out=theta[r0:r1])
        xb = x[b0 : b0 + mb]
        bound = error_bound(x_norm[:mb], c_norm_max, d)
        left = settle(
            xb, codebook, cand_v[:mb], cand_i[:mb], theta[:mb], x_norm[:mb], bound,
            k, exact, indices[b0 : b0 + mb], sq_dist[b0 : b0 + mb],
        )  # fmt: skip
        redo.append(left + b0)
    redo = torch.cat(redo)
    if redo.numel():
        ri, rd = topk_rows64(x, codebook, redo, k)
        indices[redo], sq_dist[redo] = ri, rd.to(torch.float32)
    return indices, sq_dist
