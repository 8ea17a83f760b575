"""The Triton nearest-code kernel against a float64 reference.

Without CUDA, tests/conftest.py sets TRITON_INTERPRET=1 before the kernel module is
imported, so these run the kernel itself on CPU tensors (tiles of 16, shapes kept tiny:
the interpreter is slow). With CUDA the same tests run the compiled kernel on the GPU, and
the ``gpu`` tests add large problems.

Tolerances:
- exact: indices equal to the float64 argmin (random data has no float32 ties);
- fast: the chosen code's float64 distance is within ``2 * first_pass_bound`` of the
  float64 minimum (TF32 term only for float32 inputs on a GPU; the interpreter and
  float16/bfloat16 tensor-core passes multiply exactly and accumulate in float32).
"""

from __future__ import annotations

import pytest
import torch

import discretae

triton_backend = pytest.importorskip("discretae.kernels.triton_backend")
from discretae.kernels.triton_backend import (  # noqa: E402
    first_pass_bound,
    nearest_code_triton,
    num_splits,
)

if torch.cuda.is_available() and not triton_backend.INTERPRETING:
    DEVICE = "cuda"
elif triton_backend.INTERPRETING:
    DEVICE = "cpu"
else:
    pytest.skip("no CUDA and TRITON_INTERPRET is not 1", allow_module_level=True)


def reference(x, c):
    """float64 distances by direct differences, (N, K), and their argmin (N,)."""
    d = ((x.double()[:, None, :] - c.double()[None, :, :]) ** 2).sum(-1)
    return d.argmin(1), d


def check(x, c, exact):
    """Run the kernel and compare it with the reference in the documented way."""
    idx, sq = nearest_code_triton(x, c, exact)
    assert idx.dtype == torch.int64 and sq.dtype == torch.float32
    assert idx.shape == sq.shape == (x.shape[0],)
    want, d = reference(x, c)
    idx, sq, want, d = idx.cpu(), sq.cpu(), want.cpu(), d.cpu()
    true_min = d.min(1).values
    got = d.gather(1, idx[:, None]).squeeze(1)
    half = x.dtype == c.dtype and x.dtype != torch.float32  # else the pass runs in float32
    tf32 = not exact and x.is_cuda and not half
    x_norm = x.double().norm(dim=1).cpu()
    bound = first_pass_bound(x_norm, float(c.double().norm(dim=1).max()), x.shape[1], tf32)
    if exact:
        bad = torch.nonzero(idx != want).squeeze(1)
        assert bad.numel() == 0, f"{bad.numel()} rows differ, first {bad[:5].tolist()}"
    else:
        excess = got - true_min
        assert (excess <= 2 * bound).all(), f"worst excess {excess.max():.3g}"
    # sq_dist = best + ||x||^2 in float32: the pass's error plus that of ||x||^2
    sq_err = (sq.double() - got).abs()
    assert (sq_err <= bound + x.shape[1] * 2.0**-23 * x_norm**2).all(), sq_err.max()
    return idx


def rand(*shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(DEVICE, dtype)


@pytest.mark.parametrize("exact", [True, False], ids=["exact", "fast"])
@pytest.mark.parametrize(
    "n,k,d",
    [(1, 1, 1), (7, 5, 3), (33, 17, 70), (50, 129, 257), (70, 40, 20)],
)
def test_odd_shapes_match_float64(n, k, d, exact):
    # with the interpreter's 16-wide tiles, D=20, 70 and 257 take several D chunks
    check(rand(n, d, seed=1), rand(k, d, seed=2), exact)


@pytest.mark.parametrize("exact", [True, False], ids=["exact", "fast"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n,k,d", [(33, 17, 70), (5, 129, 8)])
def test_half_inputs(n, k, d, dtype, exact):
    check(rand(n, d, dtype=dtype, seed=3), rand(k, d, dtype=dtype, seed=4), exact)


def test_mixed_dtypes_meet_in_float32():
    check(rand(9, 20, dtype=torch.float16, seed=5), rand(30, 20, seed=6), exact=True)


def test_empty_x():
    c = rand(5, 7)
    for exact in (True, False):
        idx, sq = nearest_code_triton(rand(0, 7), c, exact)
        assert idx.shape == sq.shape == (0,)
    idx, sq = discretae.nearest_code(rand(2, 0, 7), c, backend="triton")
    assert idx.shape == sq.shape == (2, 0)


@pytest.mark.parametrize("exact", [True, False], ids=["exact", "fast"])
@pytest.mark.parametrize("n,k,d", [(40, 50, 5), (3, 200, 24)])
def test_duplicate_codes_go_to_lowest_index(n, k, d, exact):
    g = torch.Generator().manual_seed(7)
    base = torch.randn(k, d, generator=g)
    perm = torch.randperm(k, generator=g)
    c = base.clone()
    c[perm[k // 2 :]] = base[perm[: k - k // 2]]  # duplicates spread over tiles and splits
    x = torch.randn(n, d, generator=g)
    x[: n // 2] = c[perm[k // 2 : k // 2 + n // 2]]  # rows sitting exactly on a duplicate
    idx = check(x.to(DEVICE), c.to(DEVICE), exact)
    first_copy = {tuple(row.tolist()): i for i, row in reversed(list(enumerate(c)))}
    for r in range(n // 2):
        assert idx[r] == first_copy[tuple(x[r].tolist())]


@pytest.mark.parametrize("exact", [True, False], ids=["exact", "fast"])
def test_non_contiguous_inputs(exact):
    x = rand(70, 33, seed=8).T  # (33, 70), stride (1, 33)
    assert not x.is_contiguous()
    check(x, rand(17, 70, seed=9), exact)
    x2 = rand(11, 40, seed=10)[:, ::2]  # D stride 2
    c2 = rand(20, 23, seed=11).T  # (23, 20) codebook, transposed
    check(x2, c2, exact)


@pytest.mark.parametrize("exact", [True, False], ids=["exact", "fast"])
# K large enough to split on a GPU too (at least 256 codes per split there)
@pytest.mark.parametrize("n,k,d", [(3, 600, 24), (5, 1100, 40)])
def test_split_k(n, k, d, exact):
    assert num_splits(n, k, torch.device(DEVICE)) > 1
    check(rand(n, d, seed=12), rand(k, d, seed=13), exact)


def test_exact_recheck_fixes_cancellation():
    # a large common offset makes ||c||^2 - 2 x.c lose the small differences in float32
    x = 100 + 0.01 * rand(40, 8, seed=14)
    c = 100 + 0.01 * rand(37, 8, seed=15)
    want, _ = reference(x, c)
    fast, _ = nearest_code_triton(x, c, exact=False)
    assert (fast.cpu() != want.cpu()).any(), "data too easy: float32 already decides it"
    check(x, c, exact=True)
    check(x, c, exact=False)


@pytest.mark.parametrize(
    "n,same_tile", [(40, False), (6, False), (40, True)], ids=["tiles", "splits", "one-tile"]
)
def test_near_ties_are_rechecked(n, same_tile):
    # Each row sits between two codes whose distances differ by 4e-8 on norms of 1e3:
    # float32 cannot tell them apart, float64 can. Every other code is far, so only the
    # second-best tracking (within a tile, across tiles, across splits) flags the row.
    g = torch.Generator().manual_seed(21)
    k, d = (64 if DEVICE == "cpu" else 1024), 6  # a GPU splits only 256+ codes
    c = 1000 * torch.randn(k, d, generator=g)
    lo = torch.randint(0, 15, (n,), generator=g)
    if same_tile:
        hi = lo + 1 + (torch.rand(n, generator=g) * (15 - lo)).long()
    else:
        hi = lo + 16 * torch.randint(1, k // 16, (n,), generator=g)
    e = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)
    c[hi] = c[lo] + 1e-3 * e
    sign = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    x = c[lo] + (0.5e-3 + 1e-5 * sign[:, None]) * e
    x, c = x.to(DEVICE), c.to(DEVICE)
    check(x, c, exact=True)
    if n < 16:
        assert num_splits(n, k, torch.device(DEVICE)) > 1


@pytest.mark.parametrize("exact", [True, False], ids=["exact", "fast"])
def test_non_finite_codes_are_never_chosen(exact):
    x = rand(20, 6, seed=22)
    c = rand(40, 6, seed=23)
    c[3, 1] = float("nan")
    c[25, 0] = float("inf")
    c[7] = x[0]  # a finite exact hit still wins
    keep = torch.ones(40, dtype=torch.bool)
    keep[[3, 25]] = False
    idx, _ = nearest_code_triton(x, c, exact)
    assert keep[idx.cpu()].all() and idx[0] == 7
    if exact:
        want, _ = reference(x, c[keep])
        assert torch.equal(idx.cpu(), torch.arange(40)[keep][want.cpu()])


@pytest.mark.filterwarnings("ignore:All-NaN slice")
def test_nan_row_gets_an_index_in_range():
    x = rand(4, 6, seed=16)
    x[1, 2] = float("nan")
    idx, _ = nearest_code_triton(x, rand(9, 6, seed=17), exact=True)
    assert ((idx >= 0) & (idx < 9)).all()


def test_public_api_uses_kernel():
    x = rand(3, 5, 12, seed=18)
    c = rand(21, 12, seed=19)
    idx, sq = discretae.nearest_code(x, c, backend="triton")
    ref_idx, ref_sq = discretae.nearest_code(x, c, backend="torch")
    assert idx.shape == (3, 5)
    assert torch.equal(idx, ref_idx)
    torch.testing.assert_close(sq, ref_sq, rtol=1e-5, atol=1e-5)
    out = discretae.nearest_code_with_sums(x, c, backend="triton", precision="fast")
    assert out[3].sum() == 15


def chunked_reference(x, c, rows=4096):
    """float64 argmin and min by the expansion, for problems too big for differences."""
    c64 = c.double()
    cc = (c64 * c64).sum(1)
    idx, dmin = [], []
    for s in range(0, x.shape[0], rows):
        x64 = x[s : s + rows].double()
        dist = torch.addmm(cc, x64, c64.T, alpha=-2.0) + (x64 * x64).sum(1, keepdim=True)
        v, i = dist.min(1)
        idx.append(i)
        dmin.append(v)
    return torch.cat(idx), torch.cat(dmin)


@pytest.mark.gpu
@pytest.mark.parametrize(
    "n,k,d,dtype",
    [
        (65536, 1024, 64, torch.float32),
        (16384, 4096, 128, torch.float32),
        (4096, 300, 1030, torch.float32),
        (7, 65536, 64, torch.float32),  # split-K
        (32768, 1024, 64, torch.float16),
        (32768, 1024, 64, torch.bfloat16),
    ],
)
def test_gpu_large_random(n, k, d, dtype):
    g = torch.Generator(device="cuda").manual_seed(20)
    x = torch.randn(n, d, device="cuda", generator=g).to(dtype)
    c = torch.randn(k, d, device="cuda", generator=g).to(dtype)
    want, true_min = chunked_reference(x, c)
    idx, sq = nearest_code_triton(x, c, exact=True)
    agree = (idx == want).double().mean().item()
    assert agree == 1.0, f"exact agrees with float64 on {agree:.6%} of rows"
    fidx, _ = nearest_code_triton(x, c, exact=False)
    x64, c64 = x.double(), c.double()
    got = ((x64 - c64[fidx]) ** 2).sum(1)
    tf32 = dtype == torch.float32
    cmax = float(c64.norm(dim=1).max())
    bound = first_pass_bound(x64.norm(dim=1), cmax, d, tf32)
    excess = got - true_min
    assert (excess <= 2 * bound).all(), f"fast: worst excess {excess.max():.3g}"
