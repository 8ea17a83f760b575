"""Chunked torch path: the CPU backend, and the reference the Triton kernel is checked against.

Rows of ``x`` go through in chunks and codes in tiles of S * G codes (G = 32 groups of S
consecutive codes). One GEMM per tile, ``[x, 1] @ [-2 c, ||c||^2]^T``, gives
``||c||^2 - 2 x.c`` (rows x codes); on CPU it is oneDNN's packed linear where torch has
it (see ``tile_gemms``). Extra memory stays at one tile, ``rows * S * G`` floats, plus
O(N) however large N and K are. Torch's row-wise min-with-index costs
about as much as the GEMM, so each tile is reduced in three cheap steps:

1. group minima: one vertical ``amin`` over the tile (columns are ordered so that a
   group is a strided column set), at memory speed;
2. the first group at the row minimum: ``min`` over G values;
3. that group's S values, gathered, and the first code at their minimum.

First-minimum at every step (and strict ``<`` between tiles) sends exact float32 ties
to the lowest index. In ``exact`` mode the second-best distance comes from the same
small tensors, and a row whose best two codes lie within twice the float32 error bound
of each other is decided again in float64 (``recheck_rows``). ``sq_dist`` is the best
expansion value plus ``||x||^2`` (float64 for rechecked rows), as in the Triton kernel.
The float32 error bound assumes full-precision float32 matmuls, torch's default.
"""

from __future__ import annotations

import math

import torch

from ._common import error_bound, recheck_rows

# floats in one distance tile per torch thread (2 MiB, one L2), up to TILE_FLOATS_MAX in all:
# measured best with 1 and 2 threads on a 2-core AVX-512 CPU (2 MiB L2 per core)
TILE_FLOATS = 1 << 19
TILE_FLOATS_MAX = 1 << 23
# codes per tile: bounds the slice of the codebook each GEMM streams through cache
TILE_CODES = 8192
MAX_ROWS = 8192
# floats of per-row bookkeeping (group minima, best-group values) held between reductions
BATCH_FLOATS = 1 << 20
# oneDNN's packed linear for the CPU GEMM when available (see tile_gemms)
USE_ONEDNN = True
# groups per tile: torch's vertical amin runs at memory speed when the kept (inner)
# dimension is 32 floats, and 10-30x slower below that (measured, torch 2.13)
GROUPS = 32


def _plan(k: int) -> tuple[int, int, int, int, int]:
    """Group size S, groups per tile G, codes per tile Kt = S * G, tiles T, rows per chunk."""
    n_tiles = -(-k // TILE_CODES)
    per_tile = -(-k // n_tiles)
    g = min(per_tile, GROUPS)
    s = -(-per_tile // g)
    kt = s * g
    tile_floats = min(TILE_FLOATS * torch.get_num_threads(), TILE_FLOATS_MAX)
    rows = max(1, min(MAX_ROWS, tile_floats // kt))
    return s, g, kt, n_tiles, rows


def code_tiles(c: torch.Tensor, s: int, g: int, n_tiles: int) -> list[torch.Tensor]:
    """c: (K, D) float32 -> one (S * G, D + 1) operand per tile.

    Columns 0..D-1 hold -2 c and column D holds ||c||^2, so ``[x, 1] @ operand^T`` is
    ``||c||^2 - 2 x.c`` with no bias pass. Inside a tile, column ``j * G + i`` holds
    code ``i * S + j``: group i (codes i*S .. i*S+S-1) is then a stride-G column set,
    and the group minima one vertical ``amin`` over S contiguous blocks of G.
    Padding codes and codes with a non-finite entry get norm +inf and zero entries, so
    their distance is +inf for every finite row: they are never the nearest.
    """
    k, d = c.shape
    kp = n_tiles * s * g
    finite = c.abs().amax(1, keepdim=True).isfinite()  # NaN propagates through amax
    aug = torch.zeros(kp, d + 1, dtype=torch.float32, device=c.device)
    aug[:k, :d] = torch.where(finite, c, 0.0) * -2.0
    aug[:, d] = math.inf
    c64 = c.double()
    aug[:k, d] = (c64 * c64).sum(1).float().masked_fill_(~finite.squeeze(1), math.inf)
    tiles = aug.view(n_tiles, g, s, d + 1).transpose(1, 2).reshape(n_tiles, s * g, d + 1)
    return list(tiles.contiguous())


def _mm_gemms(tiles: list[torch.Tensor], rows: int) -> list:
    """torch.mm per tile, into one reused (rows, Kt) buffer."""
    kt = tiles[0].shape[0]
    buf = torch.empty(rows * kt, dtype=torch.float32, device=tiles[0].device)
    return [
        lambda xb, t=t: torch.mm(xb, t.T, out=buf[: xb.shape[0] * kt].view(-1, kt)) for t in tiles
    ]


def tile_gemms(tiles: list[torch.Tensor], rows: int) -> list:
    """One ``f(xa (m, D+1)) -> (m, Kt) float32`` per tile, m <= rows.

    On CPU, oneDNN's packed linear runs about twice as fast as torch.mm (MKL sgemm) on an
    AMD EPYC (measured, torch 2.13); it is used when torch's float32 matmuls are at full
    precision, and torch.mm otherwise, or wherever the oneDNN op is missing or fails its
    probe.
    """
    matmul = getattr(torch.backends.mkldnn, "matmul", None)
    full = getattr(matmul, "fp32_precision", "ieee") in ("ieee", "none")
    full = full and torch.get_float32_matmul_precision() == "highest"
    if not (USE_ONEDNN and full and tiles[0].device.type == "cpu"):
        return _mm_gemms(tiles, rows)
    if not torch.backends.mkldnn.is_available():
        return _mm_gemms(tiles, rows)
    try:
        linear = torch.ops.mkldnn._linear_pointwise
        packed = [torch.ops.mkldnn._reorder_linear_weight(t, rows) for t in tiles]
        # [0, .., 0, 1] picks the norm column exactly, whatever the summation order
        probe = torch.zeros(1, tiles[0].shape[1])
        probe[0, -1] = 1.0
        if not torch.equal(linear(probe, packed[0], None, "none", [], ""), tiles[0][:, -1:].T):
            return _mm_gemms(tiles, rows)
    except (AttributeError, RuntimeError, NotImplementedError):
        return _mm_gemms(tiles, rows)
    return [lambda xb, p=p: linear(xb, p, None, "none", [], "") for p in packed]


def nearest_code_torch(
    x: torch.Tensor, codebook: torch.Tensor, exact: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """x: (N, D), codebook: (K, D), any float dtype -> (indices int64 (N,), sq_dist fp32 (N,))."""
    n = x.shape[0]
    k, d = codebook.shape
    dev = x.device
    f32 = {"dtype": torch.float32, "device": dev}
    indices = torch.empty(n, dtype=torch.int64, device=dev)
    sq_dist = torch.empty(n, **f32)
    if n == 0:
        return indices, sq_dist
    s, g, kt, n_tiles, rows = _plan(k)
    rows = min(rows, n)
    # rows per batch of the small reductions: whole chunks, BATCH_FLOATS of bookkeeping
    per_row = n_tiles * (s + 2 + (g if exact else 0))
    batch = min(n, max(rows, BATCH_FLOATS // per_row // rows * rows))
    c32 = codebook.to(torch.float32)
    gemms = tile_gemms(code_tiles(c32, s, g, n_tiles), rows)
    # reused buffers: a chunk of rows of [x, 1] and the per-batch reductions
    xa = torch.ones(rows, d + 1, **f32)
    gmin = torch.empty(batch, n_tiles * g, **f32) if exact else torch.empty(rows, g, **f32)
    tile_min = torch.empty(batch, n_tiles, **f32)
    tile_grp = torch.empty(batch, n_tiles, dtype=torch.int64, device=dev)
    within = torch.empty(batch, n_tiles, s, **f32)  # values of each tile's best group
    x_norm = torch.empty(n, **f32)
    if exact:
        v1_all, v2_all = torch.empty(n, **f32), torch.empty(n, **f32)
    for b0 in range(0, n, batch):
        mb = min(batch, n - b0)
        for r0 in range(0, mb, rows):
            m = min(rows, mb - r0)
            r1 = r0 + m
            xs = xa[:m, :d]
            xs.copy_(x[b0 + r0 : b0 + r1])
            torch.linalg.vector_norm(xs, dim=1, out=x_norm[b0 + r0 : b0 + r1])
            for t, gemm in enumerate(gemms):
                dist = gemm(xa[:m]).view(m, s, g)
                grp = gmin[r0:r1, t * g : (t + 1) * g] if exact else gmin[:m]
                torch.amin(dist, 1, out=grp)
                torch.min(grp, 1, out=(tile_min[r0:r1, t], tile_grp[r0:r1, t]))
                pick = tile_grp[r0:r1, t].view(m, 1, 1).expand(m, s, 1)
                torch.gather(dist, 2, pick, out=within[r0:r1, t].unsqueeze(2))
        # first tile, first group, first code at the minimum: ties go to the lowest index
        if n_tiles == 1:
            v1, g1, w = tile_min[:mb, 0], tile_grp[:mb, 0], within[:mb, 0]
            idx = g1 * s
        else:
            v1, t1 = tile_min[:mb].min(1)
            g1 = tile_grp[:mb].gather(1, t1.unsqueeze(1)).squeeze(1)
            w = within[:mb].gather(1, t1.view(mb, 1, 1).expand(mb, 1, s)).squeeze(1)
            idx = torch.add(g1 * s, t1, alpha=kt)
            g1 = torch.add(g1, t1, alpha=g)
        s1 = w.min(1).indices
        b1 = b0 + mb
        torch.add(idx, s1, out=indices[b0:b1]).clamp_(max=k - 1)
        xn = x_norm[b0:b1]
        torch.addcmul(v1, xn, xn, out=sq_dist[b0:b1]).clamp_(min=0.0)
        if exact:
            v1_all[b0:b1] = v1
            # second best: the best of the other groups and of the rest of the best group
            gmin[:mb].scatter_(1, g1.unsqueeze(1), math.inf)
            w.scatter_(1, s1.unsqueeze(1), math.inf)
            torch.minimum(gmin[:mb].amin(1), w.amin(1), out=v2_all[b0:b1])
    if exact and k > 1:
        c_norm_max = float(torch.linalg.vector_norm(c32.nan_to_num(0.0, 0.0, 0.0), dim=1).max())
        bound = error_bound(x_norm, c_norm_max, d)
        # a second code within 2*bound of the best: float32 cannot decide the row;
        # rows without a finite best (NaN rows, all codes non-finite) stay as they are
        close = (v2_all <= v1_all + 2.0 * bound) & (v1_all + bound).isfinite()
        recheck_rows(x, codebook, torch.nonzero(close).squeeze(1), indices, sq_dist)
    return indices, sq_dist
