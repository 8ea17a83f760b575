"""``nearest_code``: the one nearest-codebook search every quantizer and k-means uses."""

from __future__ import annotations

import math
import os

import torch

from ._common import check_inputs
from .topk import nearest_codes_torch
from .torch_backend import nearest_code_torch


def triton_available() -> bool:
    """True when the Triton kernel can run here: a CUDA device, or the Triton interpreter."""
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"


def _pick_backend(x: torch.Tensor, backend: str) -> str:
    if backend == "auto":
        return "triton" if x.is_cuda and triton_available() else "torch"
    if backend == "triton":
        if not triton_available():
            raise ValueError(
                "backend='triton' needs the triton package and a CUDA device, "
                "or TRITON_INTERPRET=1 for CPU tensors"
            )
        if not x.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError(
                f"backend='triton' got tensors on {x.device}; set TRITON_INTERPRET=1 "
                "to run the kernel on CPU tensors"
            )
    return backend


def _run(x, codebook, precision, backend, with_sums):
    check_inputs(x, codebook, precision, backend)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    exact = precision == "exact"
    chosen = _pick_backend(x, backend)
    if chosen == "triton":
        from .triton_backend import nearest_code_triton

        indices, sq_dist = nearest_code_triton(x2, codebook, exact=exact)
    else:
        indices, sq_dist = nearest_code_torch(x2, codebook, exact=exact)
    out = (indices.reshape(lead), sq_dist.reshape(lead))
    if not with_sums:
        return out
    k, d = codebook.shape
    sums = torch.zeros(k, d, dtype=torch.float32, device=x.device)
    sums.index_add_(0, indices, x2.to(torch.float32))
    counts = torch.bincount(indices, minlength=k).to(torch.float32)
    return out + (sums, counts)


def nearest_code(
    x: torch.Tensor,
    codebook: torch.Tensor,
    *,
    precision: str = "exact",
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of the nearest codebook row for every row of ``x``, by squared L2 distance.

    Args:
        x: (..., D) float32, float16 or bfloat16.
        codebook: (K, D), same device as ``x``; K >= 1.
        precision: ``"exact"`` (default) returns the index a float64 computation
            returns: a first pass flags every row whose two best distances lie
            within that pass's error bound of each other, and those rows are decided
            again in float64. Ties go to the lowest index. ``"fast"`` skips the
            recheck and, on a GPU, uses TF32 tensor cores for float32 inputs. The
            chosen distance then exceeds the true minimum by at most twice the
            pass's error bound: on the CPU ``2 * (D + 4) * 2^-24 * (2 ||x||
            ||c||max + ||c||max^2)`` (``kernels._common.error_bound``); on a GPU
            with float32 inputs, where TF32 may truncate each operand, about
            ``2.5 * 2^-8 * ||x|| * ||c||max``, roughly 1% of ``||x|| ||c||max``
            (``kernels.triton_backend.first_pass_bound``).
        backend: ``"auto"`` (Triton on CUDA, torch otherwise), ``"torch"`` or
            ``"triton"`` (CUDA, or CPU tensors under ``TRITON_INTERPRET=1``).

    Returns:
        indices: (...,) int64 in [0, K).
        sq_dist: (...,) float32, the squared distance to that code.

    Never builds the N x K distance matrix: the GPU kernel keeps a running argmin in
    registers, the torch path works in bounded chunks of rows.

    ``sq_dist`` is the best first-pass value plus ``||x||^2``, so it carries float32
    error up to the fast-mode bound; rows decided again in float64 get the float64 value.

    Non-finite values are not checked. A row of ``x`` holding NaN gets a NaN or inf
    distance and an index that is in range but meaningless. A codebook row holding NaN
    or inf is never chosen for a finite row; if every code is non-finite the index is 0.

    Exact mode assumes full-precision float32 matrix products, torch's default. Lowering
    that with ``torch.set_float32_matmul_precision`` on a build whose CPU matmuls then
    drop precision takes the torch fallback outside the error bound.

    Raises:
        ValueError: wrong ndim, D mismatch, K = 0, integer dtype, mixed devices,
            unknown precision or backend.
    """
    return _run(x, codebook, precision, backend, with_sums=False)


def nearest_code_with_sums(
    x: torch.Tensor,
    codebook: torch.Tensor,
    *,
    precision: str = "exact",
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``nearest_code`` plus what EMA codebook updates and k-means need.

    Returns:
        indices: (...,) int64; sq_dist: (...,) float32;
        sums: (K, D) float32, the sum of the rows of ``x`` assigned to each code;
        counts: (K,) float32, how many rows each code got.
    """
    return _run(x, codebook, precision, backend, with_sums=True)


def nearest_codes(
    x: torch.Tensor,
    codebook: torch.Tensor,
    k: int,
    *,
    precision: str = "exact",
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k nearest codebook rows for every row of ``x``, nearest first: an exact k-NN search.

    Args:
        x: (..., D) float32, float16 or bfloat16.
        codebook: (K, D), same device as ``x``.
        k: how many codes per row, 1 <= k <= K.
        precision: ``"exact"`` (default) returns what a float64 computation returns: the
            k codes with the smallest float64 ``sum((x - c)^2)``, in that order, ties to
            the lowest index (``kernels/topk.py`` proves it). A float32 first pass keeps a
            few more than k candidates per row; rows whose order float32 cannot decide
            are ranked again in float64, among the candidates or, when the doubt reaches
            past them, over the whole codebook. ``"fast"`` skips that: the i-th distance
            then exceeds the true i-th smallest by at most twice the pass's error bound
            (as for ``nearest_code``).
        backend: accepted and checked as for ``nearest_code``, but there is no Triton
            top-k kernel yet: every backend, CUDA tensors included, runs the chunked
            torch path (on a GPU: cuBLAS GEMMs per tile, then the same reductions).

    Returns:
        indices: (..., k) int64 in [0, K); ``indices[..., 0]`` is ``nearest_code``'s index.
        sq_dist: (..., k) float32, nondecreasing along the last axis up to float32 error
            (float64 values, rounded, on rows decided in float64).

    Never builds the N x K distance matrix: it holds one tile of (rows x codes) plus a
    few more than k candidates per row.

    A codebook row holding NaN or inf comes after every finite one (distance +inf, in
    index order). A row of ``x`` holding NaN gets NaN distances and indices that are in
    range but meaningless.

    Raises:
        ValueError: k not an int in [1, K], and everything ``nearest_code`` raises for.
    """
    check_inputs(x, codebook, precision, backend)
    k_codes = codebook.shape[0]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= k_codes:
        raise ValueError(f"k must be an int with 1 <= k <= K={k_codes}, got k={k!r}")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    exact = precision == "exact"
    _pick_backend(x, backend)  # same checks as nearest_code; every backend runs torch's path
    if k == 1:  # the k = 1 pass (one argmin per tile) is faster than the top-k one: a third
        # less time at (65536, 8192, 64) on 2 threads, same index, same distance rule
        idx, dist = nearest_code_torch(x2, codebook, exact=exact)
        dist.masked_fill_(x2.isnan().any(1), math.nan)  # NaN rows: NaN, as for k > 1
        indices, sq_dist = idx.unsqueeze(1), dist.unsqueeze(1)
    else:
        indices, sq_dist = nearest_codes_torch(x2, codebook, k, exact=exact)
    return indices.reshape(*lead, k), sq_dist.reshape(*lead, k)
