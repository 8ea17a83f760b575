"""Chunked torch path: the CPU backend, and the reference the Triton kernel is checked against.

Each chunk of rows computes ``||c||^2 - 2 x c^T`` into one reused buffer and reduces
it to (min, argmin) at once, so extra memory stays at ``rows_per_chunk * K`` floats
however large N is. In ``exact`` mode a row whose best two codes are closer than the
float32 error bound is decided again in float64.
"""

from __future__ import annotations

import torch

from ._common import error_bound, recheck_rows

# floats per distance chunk: 1 Mi floats = 4 MiB, about an L2/L3-sized tile on a CPU
CHUNK_FLOATS = 1 << 20


def _rows_per_chunk(k: int, d: int) -> int:
    rows = CHUNK_FLOATS // max(k, d, 1)
    return max(16, min(rows, 8192))


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
    c = codebook.to(torch.float32).contiguous()
    ct = c.T.contiguous()
    cc = (c.double() * c.double()).sum(1).float()
    c_norm_max = float(cc.max().sqrt()) if exact else 0.0
    step = _rows_per_chunk(k, d)
    buf = torch.empty(min(step, n), k, dtype=torch.float32, device=dev)
    ambiguous = []
    for start in range(0, n, step):
        xs = x[start : start + step].to(torch.float32)
        m = xs.shape[0]
        dist = torch.addmm(cc, xs, ct, alpha=-2.0, out=buf[:m])
        vals, idx = dist.min(1)
        xx = (xs * xs).sum(1)
        indices[start : start + m] = idx
        sq_dist[start : start + m] = (vals + xx).clamp_(min=0.0)
        if exact and k > 1:
            bound = error_bound(xx.sqrt(), c_norm_max, d)
            # a second code within 2*bound of the best means float32 cannot decide the row
            close = (dist <= (vals + 2.0 * bound).unsqueeze(1)).sum(1) > 1
            rows = torch.nonzero(close).squeeze(1)
            if rows.numel():
                ambiguous.append(rows + start)
    if ambiguous:
        recheck_rows(x, codebook, torch.cat(ambiguous), indices, sq_dist)
    return indices, sq_dist
