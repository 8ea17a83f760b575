"""The nearest_code contract on the torch (CPU) path, against a float64 reference.

- exact: indices equal to the float64 argmin of direct differences, ties to the lowest
  index, including rows float32 cannot decide;
- fast: the chosen code's float64 distance is within the documented bound of the float64
  minimum, and exact float32 ties still go to the lowest index;
- sq_dist: the squared distance to the chosen code, within the float32 expansion's error;
- non-finite values: a row of x holding NaN gets an index in [0, K) and a NaN distance;
  a codebook row holding NaN or inf is never the nearest of a finite row.

The ``small_tiles`` fixture shrinks chunks, tiles, groups and batches so that small shapes
cross every boundary; the ``gemm`` fixture runs both CPU GEMMs (oneDNN and torch.mm).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from discretae import kernels, nearest_code, nearest_code_with_sums

torch_backend = kernels.torch_backend

BACKENDS = ("torch", "auto")
U32 = 2.0**-24
DEFAULT_TILE = torch_backend.TILE_CODES


def reference(x, c):
    """float64 direct-difference distances (N, K) and their first argmin (N,)."""
    x64, c64 = x.reshape(-1, x.shape[-1]).double(), c.double()
    d = torch.cat([((xb[:, None, :] - c64[None]) ** 2).sum(-1) for xb in x64.split(64)])
    return d.argmin(1), d


def fast_bound(x, c):
    """The fast-mode bound the docstring states: 2 (D+4) eps (2 ||x|| ||c||max + ||c||max^2)."""
    x_norm = x.reshape(-1, x.shape[-1]).double().norm(dim=1)
    c_max = c.double().norm(dim=1).max()
    return 2 * (x.shape[-1] + 4) * U32 * (2 * x_norm * c_max + c_max**2)


def assert_same(got, want):
    bad = torch.nonzero(got.reshape(-1) != want.reshape(-1)).squeeze(1)
    assert bad.numel() == 0, f"{bad.numel()} of {want.numel()} rows differ, first {bad[:5]}"


def check(x, c, precision, backend="torch"):
    """Run nearest_code and compare with the reference as the contract says."""
    idx, sq = nearest_code(x, c, precision=precision, backend=backend)
    assert idx.dtype == torch.int64 and sq.dtype == torch.float32
    assert idx.shape == sq.shape == x.shape[:-1]
    want, d = reference(x.float(), c.float())
    idx, sq = idx.reshape(-1), sq.reshape(-1)
    if want.numel() == 0:
        return
    got = d.gather(1, idx[:, None]).squeeze(1)
    if precision == "exact":
        assert_same(idx, want)
    else:
        excess = got - d.min(1).values
        assert (excess <= fast_bound(x.float(), c.float())).all(), f"excess {excess.max():.3g}"
    # sq_dist = best expansion value + ||x||^2: the expansion's error plus a few roundings
    x2 = x.reshape(-1, x.shape[-1]).double().pow(2).sum(1)
    tol = fast_bound(x.float(), c.float()) / 2 + 4 * U32 * (x2 + got) + 1e-30
    assert ((sq.double() - got).abs() <= tol).all(), f"sq_dist off by {(sq - got).abs().max()}"


def shrink_plan(mp, tile_floats=128, tile_codes=64, groups=4, batch_floats=3000):
    """Tiny tiles, groups, chunks and batches, so small shapes cross every boundary."""
    mp.setattr(torch_backend, "TILE_FLOATS", tile_floats)
    mp.setattr(torch_backend, "TILE_CODES", tile_codes)
    mp.setattr(torch_backend, "GROUPS", groups)
    mp.setattr(torch_backend, "BATCH_FLOATS", batch_floats)


@pytest.fixture
def small_tiles(monkeypatch):
    shrink_plan(monkeypatch)


@pytest.fixture(params=["onednn", "mm"])
def gemm(request, monkeypatch):
    """Both CPU GEMMs: oneDNN's packed linear (where torch has it) and torch.mm."""
    monkeypatch.setattr(torch_backend, "USE_ONEDNN", request.param == "onednn")


SHAPES = [(0, 5, 3), (1, 1, 1), (7, 1, 3), (50, 2, 1), (33, 3, 300), (200, 17, 5), (130, 97, 7)]


@pytest.mark.parametrize("precision", ["exact", "fast"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_random_matches_reference(shape, backend, precision, gemm):
    n, k, d = shape
    g = torch.Generator().manual_seed(n * 1000 + k * 10 + d)
    check(torch.randn(n, d, generator=g), torch.randn(k, d, generator=g), precision, backend)


@pytest.mark.parametrize("precision", ["exact", "fast"])
@pytest.mark.parametrize("shape", [(200, 97, 7), (200, 3, 2), (65, 200, 33)], ids=str)
def test_many_chunks_and_tiles(shape, precision, small_tiles, gemm):
    n, k, d = shape
    s, _, _, n_tiles, rows = torch_backend._plan(k)
    assert n > 2 * rows and (k < 10 or (s > 1 and n_tiles > 1)), "shape must cross boundaries"
    g = torch.Generator().manual_seed(1)
    check(torch.randn(n, d, generator=g), torch.randn(k, d, generator=g), precision)


@pytest.mark.parametrize("precision", ["exact", "fast"])
def test_default_plan_crosses_chunk_and_tile(precision):
    """K above one default tile, N above one default chunk."""
    k = torch_backend.TILE_CODES + 37
    n = torch_backend._plan(k)[4] + 5
    g = torch.Generator().manual_seed(2)
    x, c = torch.randn(n, 6, generator=g), torch.randn(k, 6, generator=g)
    c[-1] = x[-1]  # the last code must be found from the last chunk
    idx, sq = nearest_code(x, c, precision=precision)
    assert idx[-1] == k - 1 and sq[-1] <= 1e-4 * x[-1].square().sum()
    check(x, c, precision)


@pytest.mark.parametrize("precision", ["exact", "fast"])
def test_leading_dims(precision):
    g = torch.Generator().manual_seed(3)
    x, c = torch.randn(2, 3, 5, 4, generator=g), torch.randn(9, 4, generator=g)
    idx, sq = nearest_code(x, c, precision=precision)
    assert idx.shape == sq.shape == (2, 3, 5)
    check(x, c, precision)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("precision", ["exact", "fast"])
def test_half_inputs(dtype, precision):
    """Half inputs are upcast exactly, so exact mode matches float64 on the same values."""
    g = torch.Generator().manual_seed(4)
    x, c = torch.randn(300, 24, generator=g), torch.randn(70, 24, generator=g)
    check(x.to(dtype), c.to(dtype), precision)
    check(x.to(dtype), c, precision)


@pytest.mark.parametrize("precision", ["exact", "fast"])
@pytest.mark.parametrize("tiles", ["default", "small"])
def test_duplicate_codes_go_to_lowest_index(precision, tiles, request, gemm):
    tile = DEFAULT_TILE
    if tiles == "small":
        request.getfixturevalue("small_tiles")
        tile = torch_backend.TILE_CODES
    g = torch.Generator().manual_seed(5)
    k, d = 2 * tile + 211, 8
    c = torch.randn(k, d, generator=g)
    # pairs within a group, across groups and across tiles
    pairs = [(0, 1), (3, k - 1), (17, 18), (40, tile + 2), (5, 200), (20, 50)]
    for lo, hi in pairs:
        c[hi] = c[lo]
    # rows near the duplicated codes, and rows exactly on them
    lows = torch.tensor([lo for lo, _ in pairs])
    x = torch.cat([c[lows] + 0.01 * torch.randn(len(pairs), d, generator=g), c[lows]])
    idx, sq = nearest_code(x, c, precision=precision)
    assert_same(idx, torch.cat([lows, lows]))
    assert (sq[len(pairs) :] <= 1e-4 * x[len(pairs) :].square().sum(1)).all()


def near_tie_problem(n=200, k=16, d=8, seed=6):
    """Codes all at about distance 1 from x, with |x| ~ 1e3.

    The float32 expansion errs by ~ D * 2^-24 * |x|^2 ~ 0.5, far more than the gaps
    between the codes' distances (~1e-4), which float64 resolves.
    """
    g = torch.Generator().manual_seed(seed)
    centre = 1000.0 + torch.randn(n, 1, d, generator=g)
    r = torch.randn(n, k, d, generator=g, dtype=torch.float64)
    c = (centre + r / r.norm(dim=-1, keepdim=True)).float()
    return centre.squeeze(1).float(), c


def test_exact_decides_what_float32_cannot():
    x, codes = near_tie_problem()
    got_exact, got_fast, want = [], [], []
    for xi, ci in zip(x, codes, strict=True):
        want.append(reference(xi[None], ci)[0])
        got_exact.append(nearest_code(xi[None], ci)[0])
        got_fast.append(nearest_code(xi[None], ci, precision="fast")[0])
    want, got_exact, got_fast = torch.cat(want), torch.cat(got_exact), torch.cat(got_fast)
    assert_same(got_exact, want)
    # the construction really defeats a float32 pass: fast mode misses some rows
    assert (got_fast != want).sum() > 0


def test_exact_decides_batched_near_ties(gemm):
    """Many rows, one shared codebook of near-equidistant codes around one centre."""
    g = torch.Generator().manual_seed(7)
    centre = torch.full((16,), 1000.0)
    r = torch.randn(300, 16, generator=g, dtype=torch.float64)
    c = (centre + r / r.norm(dim=1, keepdim=True)).float()
    x = (centre + 1e-3 * torch.randn(500, 16, generator=g)).float()
    check(x, c, "exact")
    check(x, c, "fast")


@pytest.mark.parametrize("precision", ["exact", "fast"])
def test_non_contiguous_inputs(precision):
    g = torch.Generator().manual_seed(8)
    x = torch.randn(12, 300, generator=g)[:, ::3].T  # (100, 12), strides (3, 300)
    c = torch.randn(12, 40, generator=g).T  # (40, 12) transposed
    assert not x.is_contiguous() and not c.is_contiguous()
    idx, sq = nearest_code(x, c, precision=precision)
    idx_c, sq_c = nearest_code(x.contiguous(), c.contiguous(), precision=precision)
    assert_same(idx, idx_c)
    assert torch.equal(sq, sq_c)
    check(x, c, precision)


@pytest.mark.parametrize("backend", BACKENDS)
def test_with_sums_matches_index_add(backend):
    g = torch.Generator().manual_seed(9)
    x, c = torch.randn(4, 50, 6, generator=g).half(), torch.randn(11, 6, generator=g)
    idx, sq, sums, counts = nearest_code_with_sums(x, c, backend=backend)
    idx2, sq2 = nearest_code(x, c, backend=backend)
    assert torch.equal(idx, idx2) and torch.equal(sq, sq2)
    flat, x2 = idx.reshape(-1), x.reshape(-1, 6).float()
    want = torch.zeros(11, 6, dtype=torch.float64).index_add_(0, flat, x2.double())
    assert sums.dtype == counts.dtype == torch.float32 and sums.shape == (11, 6)
    torch.testing.assert_close(sums.double(), want, rtol=1e-5, atol=1e-5)
    assert torch.equal(counts, torch.bincount(flat, minlength=11).float())
    assert counts.sum() == 200


def test_nan_and_inf():
    g = torch.Generator().manual_seed(10)
    x, c = torch.randn(20, 5, generator=g), torch.randn(9, 5, generator=g)
    x[3] = math.nan
    x[4, 1] = math.inf
    c[2] = x[7]
    d = reference(x[5:], c)[1]
    d[:, [6, 8]] = math.inf
    want = d.argmin(1)
    c[6, 0] = math.nan  # a NaN code: never chosen for finite rows
    c[8, 4] = -math.inf
    for precision in ("exact", "fast"):
        idx, sq = nearest_code(x, c, precision=precision)
        assert ((idx >= 0) & (idx < 9)).all()
        assert sq[3].isnan()
        assert_same(idx[5:], want)
        assert idx[7] == 2 and sq[7] <= 1e-4 * x[7].square().sum()
    only_nan = torch.full((3, 5), math.nan)
    idx, _ = nearest_code(x[5:], only_nan)
    assert (idx == 0).all()


@pytest.mark.parametrize(
    ("x", "c", "kwargs", "message"),
    [
        (torch.zeros(4, 3), torch.zeros(5, 2), {}, r"D=3 .*\(4, 3\).*D=2"),
        (torch.zeros(4, 3), torch.zeros(0, 3), {}, r"K >= 1.*\(0, 3\)"),
        (torch.zeros(4, 3), torch.zeros(3), {}, r"2-D.*\(3,\)"),
        (torch.tensor(1.0), torch.zeros(5, 1), {}, r"at least 1 dimension.*\(\)"),
        (torch.zeros(4, 0), torch.zeros(5, 0), {}, r"D >= 1.*\(5, 0\)"),
        (torch.zeros(4, 3, dtype=torch.int64), torch.zeros(5, 3), {}, r"x has dtype torch.int64"),
        (torch.zeros(4, 3), torch.zeros(5, 3, dtype=torch.int32), {}, r"codebook.*int32"),
        (torch.zeros(4, 3, dtype=torch.float64), torch.zeros(5, 3), {}, r"float64"),
        (torch.zeros(4, 3), torch.zeros(5, 3), {"precision": "tf32"}, r"'tf32'.*exact"),
        (torch.zeros(4, 3), torch.zeros(5, 3), {"backend": "cuda"}, r"'cuda'.*torch"),
        (torch.zeros(4, 3, device="meta"), torch.zeros(5, 3), {}, r"meta.*cpu"),
        ([[0.0, 1.0]], torch.zeros(5, 2), {}, r"torch tensors, got list"),
    ],
)
def test_bad_input_raises(x, c, kwargs, message):
    with pytest.raises(ValueError, match=message):
        nearest_code(x, c, **kwargs)
    with pytest.raises(ValueError, match=message):
        nearest_code_with_sums(x, c, **kwargs)


def test_triton_on_cpu_needs_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="triton"):
        nearest_code(torch.zeros(4, 3), torch.zeros(5, 3), backend="triton")


small_floats = st.floats(-4, 4, allow_nan=False, width=32)


@st.composite
def problems(draw):
    n, k, d = draw(st.integers(1, 40)), draw(st.integers(1, 40)), draw(st.integers(1, 9))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    if draw(st.booleans()):  # small integers: ties are common
        x = torch.randint(-3, 4, (n, d), generator=g).float()
        c = torch.randint(-3, 4, (k, d), generator=g).float()
    else:
        scale = draw(st.sampled_from([1e-3, 1.0, 1e3]))
        x = torch.randn(n, d, generator=g) * scale + draw(small_floats) * scale
        c = torch.randn(k, d, generator=g) * scale
        if draw(st.booleans()):  # codes copied from x: zero distances and duplicates
            c[: min(n, k)] = x[: min(n, k)]
    return x, c


@settings(max_examples=50, deadline=None)
@given(problems(), st.booleans())
def test_exact_property(problem, small):
    x, c = problem
    with pytest.MonkeyPatch.context() as mp:
        if small:
            shrink_plan(mp, tile_floats=64, tile_codes=12, groups=3, batch_floats=300)
        idx, _ = nearest_code(x, c)
        assert_same(idx, reference(x, c)[0])
        if x.abs().max() <= 3 and c.abs().max() <= 3 and (x == x.round()).all():
            # small integers: the float32 pass is exact, so fast mode must tie-break too
            assert_same(nearest_code(x, c, precision="fast")[0], reference(x, c)[0])
