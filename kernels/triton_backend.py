"""Triton nearest-codebook kernel: a fused ``||c||^2 - 2 x.c`` pass with a running argmin.

Each program owns BLOCK_N rows of x and streams its share of the codebook in BLOCK_K
tiles; the D axis is walked in BLOCK_D chunks that accumulate into one tl.dot tile.
A row keeps (best value, best index, second-best value) in registers, so the N x K
distance matrix never exists: extra memory is O(N) floats, O(splits * N) when the
codebook is split across programs because N alone cannot fill the GPU.

Precision:
- fast: tl.dot's TF32 on float32 inputs (native tensor-core math on float16/bfloat16).
- exact: a "tf32x3" first pass, then every row whose best two values lie within twice
  the pass's error bound is decided again in float64 by ``recheck_rows``.
"""

from __future__ import annotations

import functools
import math
import os

import torch
import triton
import triton.language as tl

from ._common import U32, error_bound, recheck_rows

# read when this module is imported, the same moment triton.jit decides to interpret
INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"

# Error of the tensor-core first pass, as a float32-style unit roundoff for error_bound.
# tf32x3 (Triton's F32DotTC): a = a_big + a_small with a_big = rna_tf32(a), so
# |a_small| <= 2^-11 |a|; the MMA truncates a_small to tf32 (error <= 2^-10 |a_small|)
# and drops a_small*b_small. Per product:
#   |ab - computed| <= (2^-22 + 2 * 2^-21)(1 + 2^-11) |a||b| ~= 5 * 2^-22 |a||b|.
# MMA accumulation in float32 may truncate: <= (D + 1) * 2^-23 * sum|a_i b_i|. With
# sum|a_i b_i| <= ||x|| ||c|| (Cauchy-Schwarz), 2 x.c errs by <= (D + 11) * 2^-22 ||x|| ||c||
# (plus float32 roundings of ||c||^2 and the subtraction). error_bound with u = 2^-21
# gives 1.25 * (D + 4) * 2^-21 * 2 ||x|| ||c|| = (5D + 20) * 2^-22 ||x|| ||c||, at least
# twice that for every D >= 1. float16/bfloat16 products are exact in float32, so the
# same bound covers their native tensor-core pass with more margin.
U_FIRST_PASS = 2.0**-21
# Plain TF32 (fast mode, float32 inputs) may truncate each operand to 10 mantissa bits:
# each product errs by <= 2^-9 |a||b|, so 2 x.c by <= 2^-8 ||x|| ||c|| on top of the above.
TF32_PRODUCT = 2.0**-8

# interpreter launch: autotune cannot benchmark there, and small tiles keep it quick
_INTERP_BLOCKS = {"BLOCK_N": 16, "BLOCK_K": 16, "BLOCK_D": 16}
_INTERP_SMS = 2  # pretend device size so the split-K path runs under the interpreter


@triton.jit
def _merge_tile(acc, offs_k, cc_ptr, K, best, best_idx, second, TRACK_SECOND: tl.constexpr):
    """Fold one (BLOCK_N, BLOCK_K) tile of x.c into the running best, index and second best."""
    # padded codes get ||c||^2 = inf, so they never win and need no other mask
    cc = tl.load(cc_ptr + offs_k, mask=offs_k < K, other=float("inf"))
    dist = cc[None, :] - 2.0 * acc
    t_min = tl.min(dist, 1)
    # lowest index among the tile's minima, spelled out rather than left to argmin
    t_idx = tl.min(tl.where(dist == t_min[:, None], offs_k[None, :], K), 1)
    better = t_min < best  # strict: an equal value in a later tile has a higher index
    if TRACK_SECOND:
        t_second = tl.min(tl.where(offs_k[None, :] == t_idx[:, None], float("inf"), dist), 1)
        second = tl.where(better, tl.minimum(best, t_second), tl.minimum(second, t_min))
    best_idx = tl.where(better, t_idx, best_idx)
    best = tl.where(better, t_min, best)
    return best, best_idx, second


@triton.jit
def _nearest_code_kernel(
    x_ptr,
    c_ptr,
    cc_ptr,
    best_ptr,
    idx_ptr,
    second_ptr,
    xx_ptr,
    N,
    K,
    D,
    stride_xn,
    stride_xd,
    stride_cn,
    stride_cd,
    SPLITS,
    K_BUCKET,  # autotune key only
    D_BUCKET,  # autotune key only
    PRECISION: tl.constexpr,
    TRACK_SECOND: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
    ONE_D_TILE: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = offs_n < N
    x_rows = x_ptr + offs_n.to(tl.int64)[:, None] * stride_xn
    offs_d = tl.arange(0, BLOCK_D)

    if ONE_D_TILE:
        # the whole row fits one chunk: load it once for the entire codebook sweep
        xv = tl.load(
            x_rows + offs_d[None, :] * stride_xd,
            mask=row_ok[:, None] & (offs_d[None, :] < D),
            other=0.0,
        )
        xf = xv.to(tl.float32)
        if pid_s == 0:
            tl.store(xx_ptr + offs_n, tl.sum(xf * xf, 1), mask=row_ok)
        x_tile = xv.to(c_ptr.dtype.element_ty)
    else:
        if pid_s == 0:
            xx = tl.zeros((BLOCK_N,), dtype=tl.float32)
            for d0 in range(0, D, BLOCK_D):
                dd = d0 + offs_d
                xf = tl.load(
                    x_rows + dd[None, :] * stride_xd,
                    mask=row_ok[:, None] & (dd[None, :] < D),
                    other=0.0,
                ).to(tl.float32)
                xx += tl.sum(xf * xf, 1)
            tl.store(xx_ptr + offs_n, xx, mask=row_ok)

    # this program's share of the codebook: a whole number of BLOCK_K tiles
    tiles_per_split = tl.cdiv(tl.cdiv(K, BLOCK_K), SPLITS)
    k_lo = pid_s * tiles_per_split * BLOCK_K
    k_hi = tl.minimum(K, k_lo + tiles_per_split * BLOCK_K)

    best = tl.full((BLOCK_N,), float("inf"), dtype=tl.float32)
    second = tl.full((BLOCK_N,), float("inf"), dtype=tl.float32)
    best_idx = tl.full((BLOCK_N,), 0, dtype=tl.int32) + K  # K = none yet
    if ONE_D_TILE:
        for k0 in range(k_lo, k_hi, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            ct = tl.load(
                c_ptr + offs_k.to(tl.int64)[None, :] * stride_cn + offs_d[:, None] * stride_cd,
                mask=(offs_k[None, :] < K) & (offs_d[:, None] < D),
                other=0.0,
            )
            acc = tl.dot(x_tile, ct, input_precision=PRECISION)
            best, best_idx, second = _merge_tile(
                acc, offs_k, cc_ptr, K, best, best_idx, second, TRACK_SECOND
            )
    else:
        # one flat loop over (K tile, D chunk) pairs: a nested D loop would restart the
        # software pipeline for every K tile
        n_chunks = tl.cdiv(D, BLOCK_D)
        n_iter = tl.cdiv(tl.maximum(k_hi - k_lo, 0), BLOCK_K) * n_chunks  # 0: empty split
        k0 = k_lo
        d0 = 0
        acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
        for _ in range(0, n_iter):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            dd = d0 + offs_d
            xt = tl.load(
                x_rows + dd[None, :] * stride_xd,
                mask=row_ok[:, None] & (dd[None, :] < D),
                other=0.0,
            ).to(c_ptr.dtype.element_ty)
            ct = tl.load(
                c_ptr + offs_k.to(tl.int64)[None, :] * stride_cn + dd[:, None] * stride_cd,
                mask=(offs_k[None, :] < K) & (dd[:, None] < D),
                other=0.0,
            )
            acc = tl.dot(xt, ct, acc, input_precision=PRECISION)
            last = d0 + BLOCK_D >= D
            if last:
                best, best_idx, second = _merge_tile(
                    acc, offs_k, cc_ptr, K, best, best_idx, second, TRACK_SECOND
                )
                acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
            k0 = tl.where(last, k0 + BLOCK_K, k0)
            d0 = tl.where(last, 0, d0 + BLOCK_D)

    out = pid_s.to(tl.int64) * N + offs_n
    tl.store(best_ptr + out, best, mask=row_ok)
    tl.store(idx_ptr + out, best_idx, mask=row_ok)
    if TRACK_SECOND:
        tl.store(second_ptr + out, second, mask=row_ok)


_heuristic_kernel = triton.heuristics({"ONE_D_TILE": lambda a: a["D"] <= a["BLOCK_D"]})(
    _nearest_code_kernel
)


def _config(bn, bk, bd, warps, stages):
    return triton.Config(
        {"BLOCK_N": bn, "BLOCK_K": bk, "BLOCK_D": bd}, num_warps=warps, num_stages=stages
    )


# Hopper-sized tiles: 64-128 rows x 64-256 codes per wgmma tile, 32-128 wide D chunks.
# All compile for sm_90 (checked ahead of time, no GPU at hand): none spills registers
# on the one-chunk path; on the multi-chunk path some tf32x3 and BLOCK_K=256 tiles spill
# a little. float32 tf32x3 with BLOCK_D=128, or 128x256x64, needs more than the 227 KiB
# of shared memory: autotune skips those.
_CONFIGS = [
    _config(128, 128, 64, 8, 3),
    _config(128, 256, 32, 8, 3),
    _config(128, 256, 64, 8, 2),
    _config(128, 64, 64, 4, 4),
    _config(64, 256, 64, 8, 2),
    _config(64, 128, 64, 4, 3),
    _config(64, 64, 32, 4, 4),
    _config(128, 128, 128, 8, 2),
    _config(64, 128, 128, 4, 2),
]


def _prune(configs, named_args, **kwargs):
    """Drop tiles much wider than the problem along D or K."""
    d, k = named_args["D"], named_args["K"]
    kept = [
        c
        for c in configs
        if c.kwargs["BLOCK_D"] <= max(32, triton.next_power_of_2(d))
        and c.kwargs["BLOCK_K"] <= max(64, triton.next_power_of_2(k))
    ]
    return kept or configs


_tuned_kernel = triton.autotune(
    configs=_CONFIGS,
    # tensor dtypes join the key on their own
    key=["K_BUCKET", "D_BUCKET", "SPLITS", "PRECISION", "TRACK_SECOND"],
    prune_configs_by={"early_config_prune": _prune},
)(_heuristic_kernel)


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def num_splits(n: int, k: int, device: torch.device) -> int:
    """How many programs share the codebook: > 1 only when N's row blocks can't fill the GPU.

    Aim for two row blocks per SM; give each split at least one of the widest K tiles;
    round down to a power of two so the autotune key sees few distinct values.
    """
    if INTERPRETING:
        sms, rows_per_block, min_codes = _INTERP_SMS, _INTERP_BLOCKS["BLOCK_N"], 16
    else:
        sms, rows_per_block, min_codes = _sm_count(device.index or 0), 128, 256
    target = 2 * sms
    row_blocks = triton.cdiv(n, rows_per_block)
    if row_blocks >= target:
        return 1
    splits = min(target // row_blocks, triton.cdiv(k, min_codes))
    return 1 << (max(splits, 1).bit_length() - 1)


def _merge_splits(best, idx, second, k):
    """(S, N) partial results -> (N,): lowest value, lowest index among equal values."""
    b = best.min(0).values
    i = torch.where(best == b, idx, k).min(0).values
    s = None
    if second is not None:
        others = torch.where(idx == i, float("inf"), best).min(0).values
        s = torch.minimum(second.min(0).values, others)
    return b, i, s


def first_pass_bound(x_norm: torch.Tensor, c_norm_max: float, d: int, tf32: bool):
    """Bound on the kernel's error in ``||c||^2 - 2 x.c`` for every code, per row.

    x_norm: (N,) float32. ``tf32`` is True for the fast pass on float32 inputs.
    In fast mode the chosen code's true distance exceeds the true minimum by at most
    twice this bound.
    """
    bound = error_bound(x_norm, c_norm_max, d) * (U_FIRST_PASS / U32)
    if tf32:
        bound = bound + 1.25 * TF32_PRODUCT * x_norm * c_norm_max
    return bound


def nearest_code_triton(
    x: torch.Tensor, codebook: torch.Tensor, exact: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """x: (N, D), codebook: (K, D), float32/16/bf16 -> (indices int64 (N,), sq_dist fp32 (N,)).

    Runs on CUDA tensors, or on CPU tensors when TRITON_INTERPRET=1 was set before import.
    """
    if not x.is_cuda and not INTERPRETING:
        raise ValueError(
            f"the Triton kernel needs CUDA tensors, got {x.device}; set TRITON_INTERPRET=1 "
            "before importing discretae to run it on CPU tensors"
        )
    n, d = x.shape
    k = codebook.shape[0]
    dev = x.device
    if n == 0:
        return (
            torch.empty(0, dtype=torch.int64, device=dev),
            torch.empty(0, dtype=torch.float32, device=dev),
        )
    # mixed dtypes meet in float32, which holds every float16/bfloat16 value exactly
    compute = x.dtype if x.dtype == codebook.dtype else torch.float32
    if INTERPRETING and compute == torch.bfloat16:
        # the interpreter's tl.dot multiplies bfloat16 tiles as raw uint16 bits
        compute = torch.float32
    # a code with a non-finite entry gets zero entries and norm +inf: never the nearest
    cc64 = (codebook.to(torch.float64) ** 2).sum(1)
    finite = torch.isfinite(cc64)
    c = torch.where(finite[:, None], codebook.to(compute), 0.0)
    cc = cc64.masked_fill(~finite, math.inf).to(torch.float32)
    splits = num_splits(n, k, dev)
    best = torch.empty(splits, n, dtype=torch.float32, device=dev)
    idx = torch.empty(splits, n, dtype=torch.int32, device=dev)
    second = torch.empty(splits, n, dtype=torch.float32, device=dev) if exact else best
    xx = torch.empty(n, dtype=torch.float32, device=dev)
    args = (x, c, cc, best, idx, second, xx, n, k, d)
    args += (x.stride(0), x.stride(1), c.stride(0), c.stride(1), splits)
    args += (triton.next_power_of_2(k), triton.next_power_of_2(d))
    meta = {
        "PRECISION": "tf32x3" if exact and compute == torch.float32 else "tf32",
        "TRACK_SECOND": exact,
    }
    if INTERPRETING:
        grid = (triton.cdiv(n, _INTERP_BLOCKS["BLOCK_N"]), splits)
        _heuristic_kernel[grid](*args, **meta, **_INTERP_BLOCKS)
    else:
        with torch.cuda.device(dev):
            _tuned_kernel[lambda m: (triton.cdiv(n, m["BLOCK_N"]), splits)](*args, **meta)

    if splits == 1:
        best, idx, second = best[0], idx[0], second[0] if exact else None
    else:
        best, idx, second = _merge_splits(best, idx, second if exact else None, k)
    # NaN rows keep the "none" index K: clamp into range, as the contract allows
    indices = idx.to(torch.int64).clamp_(max=k - 1)
    sq_dist = (best + xx).clamp_(min=0.0)
    if exact and k > 1:
        c_norm_max = float(cc64.masked_fill(~finite, 0.0).max().sqrt())
        bound = first_pass_bound(xx.sqrt(), c_norm_max, d, tf32=False)
        rows = torch.nonzero(second - best <= 2.0 * bound).squeeze(1)
        recheck_rows(x, codebook, rows, indices, sq_dist)
    return indices, sq_dist
