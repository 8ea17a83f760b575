"""``nearest_codes`` (top-k) against a float64 reference.

- exact: indices equal to the first k of a stable float64 argsort of direct differences
  (ties to the lowest index), sq_dist within float32 error of those distances;
- fast: the i-th distance within twice the first pass's error bound of the i-th smallest;
- k = 1 equals ``nearest_code``; bad k raises ValueError.

``small_tiles`` shrinks tiles, groups, chunks and batches so small shapes cross every
boundary and take the grouped path; ``gemm`` runs both CPU GEMMs.
"""

from __future__ import annotations

import math

import pytest
import torch

from discretae import kernels
from discretae.kernels import nearest_code, nearest_codes, triton_available

topk = kernels.topk
torch_backend = kernels.torch_backend
U32 = 2.0**-24


def reference(x, c, k):
    """float64 direct differences: first k codes of a stable argsort, and their distances."""
    x64, c64 = x.reshape(-1, x.shape[-1]).double(), c.double()
    d = torch.cat([((xb[:, None, :] - c64[None]) ** 2).sum(-1) for xb in x64.split(64)])
    d = torch.where(c64.isfinite().all(1), d, math.inf)  # non-finite codes last, index order
    order = d.argsort(dim=1, stable=True)[:, :k]
    return order, d.gather(1, order), d


def bound(x, c):
    """The first pass's error bound per row (``kernels._common.error_bound``), float64."""
    x_norm = x.reshape(-1, x.shape[-1]).double().norm(dim=1)
    c_max = c.double().norm(dim=1).nan_to_num(0.0, 0.0).max()  # over finite codes
    return 1.25 * (x.shape[-1] + 4) * U32 * 1.001 * (2 * x_norm * c_max + c_max**2)


def check(x, c, k, precision="exact"):
    idx, sq = nearest_codes(x, c, k, precision=precision, backend="torch")
    assert idx.dtype == torch.int64 and sq.dtype == torch.float32
    assert idx.shape == sq.shape == (*x.shape[:-1], k)
    want, want_d, d = reference(x.float(), c.float(), k)
    idx, sq = idx.reshape(-1, k), sq.reshape(-1, k)
    if want.numel() == 0:
        return
    assert ((idx >= 0) & (idx < c.shape[0])).all()
    got_d = d.gather(1, idx)
    if precision == "exact":
        bad = torch.nonzero((idx != want).any(1)).squeeze(1)
        assert bad.numel() == 0, f"{bad.numel()} of {len(want)} rows differ, first {bad[:5]}"
    else:
        assert (idx.sort(1).values.diff(dim=1) > 0).all(), "a code returned twice"
        excess = got_d - want_d
        assert (excess <= 2 * bound(x.float(), c.float())[:, None]).all(), excess.max()
    x2 = x.reshape(-1, x.shape[-1]).double().pow(2).sum(1, keepdim=True)
    tol = bound(x.float(), c.float())[:, None] + 4 * U32 * (x2 + got_d) + 1e-30
    err = (sq.double() - got_d).abs().masked_fill_(got_d.isinf() & (sq.double() == got_d), 0.0)
    assert (err <= tol).all(), err.max()


def shrink(mp, tile_floats=256, tile_codes=96, groups=16, batch_floats=2000):
    mp.setattr(topk, "TILE_FLOATS", tile_floats)
    mp.setattr(topk, "TILE_CODES", tile_codes)
    mp.setattr(topk, "GROUPS", groups)
    mp.setattr(topk, "GROUPS_PER_KEPT", 2)
    mp.setattr(topk, "BATCH_FLOATS", batch_floats)


@pytest.fixture
def small_tiles(monkeypatch):
    shrink(monkeypatch)


@pytest.fixture(params=["onednn", "mm"])
def gemm(request, monkeypatch):
    monkeypatch.setattr(torch_backend, "USE_ONEDNN", request.param == "onednn")


SHAPES = [(1, 1, 1, 1), (7, 5, 3, 2), (50, 40, 1, 5), (33, 300, 16, 10), (200, 97, 7, 50)]


@pytest.mark.parametrize("precision", ["exact", "fast"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_random_matches_reference(shape, precision, gemm):
    n, k_codes, d, k = shape
    g = torch.Generator().manual_seed(n + k_codes + d + k)
    x, c = torch.randn(n, d, generator=g), torch.randn(k_codes, d, generator=g)
    check(x, c, k, precision)


@pytest.mark.parametrize("precision", ["exact", "fast"])
@pytest.mark.parametrize("shape", [(300, 250, 8, 3), (130, 500, 20, 1), (90, 400, 5, 4)], ids=str)
def test_grouped_tiles_chunks_and_batches(shape, precision, small_tiles, gemm):
    n, k_codes, d, k = shape
    p = topk.plan(k_codes, k)
    assert p["s"] > 1 and p["n_tiles"] > 1 and n > 2 * p["rows"], p
    g = torch.Generator().manual_seed(5)
    check(torch.randn(n, d, generator=g), torch.randn(k_codes, d, generator=g), k, precision)


def test_default_plan_is_grouped_at_the_target_shape():
    p = topk.plan(8192, 10)
    assert p["n_tiles"] == 1 and p["s"] > 1 and p["g"] >= 2 * p["lg"]


@pytest.mark.parametrize("k", [1, 4, 30])
def test_large_offset(k, small_tiles):
    """x and codes near 1000: float32 cancellation decides nothing, float64 must."""
    g = torch.Generator().manual_seed(6)
    x = torch.randn(120, 6, generator=g) + 1000
    c = torch.randn(60, 6, generator=g) + 1000
    check(x, c, k)


@pytest.mark.parametrize("tiles", ["default", "small"])
@pytest.mark.parametrize("k", [1, 3, 12])
def test_duplicate_codes_tie_to_lowest_index(k, tiles, monkeypatch):
    if tiles == "small":
        shrink(monkeypatch)
    g = torch.Generator().manual_seed(7)
    base = torch.randn(20, 5, generator=g)
    c = torch.cat([base, base[:7], base, base[3:5]])[torch.randperm(49, generator=g)]
    x = torch.cat([torch.randn(80, 5, generator=g), c[:15]])
    check(x, c, k)


def test_every_finish_path_runs(monkeypatch):
    """Clear rows, reranked rows and rows redone over the whole codebook all occur."""
    shrink(monkeypatch)
    seen = {"rerank": 0, "full": 0, "tile_topk": 0}
    for name, key in (("rerank_rows", "rerank"), ("topk_rows64", "full")):
        orig = getattr(topk, name)

        def spy(*a, orig=orig, key=key):
            seen[key] += a[2].numel()
            return orig(*a)

        monkeypatch.setattr(topk, name, spy)
    g = torch.Generator().manual_seed(8)
    base = torch.randn(40, 4, generator=g)
    # codes 3j..3j+2 nearly equal: often three near codes in one group of 4
    c = base.repeat_interleave(3, 0) + 1e-6 * torch.randn(120, 4, generator=g)
    x = torch.cat([torch.randn(100, 4, generator=g), base[:10]])
    orig_topk = torch.topk

    def topk_spy(t, n, *a, **kw):
        seen["tile_topk"] += t.shape[1] > 2 * topk.GROUPS
        return orig_topk(t, n, *a, **kw)

    monkeypatch.setattr(torch, "topk", topk_spy)
    check(x, c, 3)
    monkeypatch.setattr(torch, "topk", orig_topk)
    check(torch.randn(30, 4, generator=g) + 1000, torch.randn(50, 4, generator=g) + 1000, 5)
    assert all(seen.values()), seen


@pytest.mark.parametrize("precision", ["exact", "fast"])
def test_k1_agrees_with_nearest_code(precision):
    g = torch.Generator().manual_seed(9)
    x, c = torch.randn(500, 12, generator=g), torch.randn(300, 12, generator=g)
    c[::7] = c[1::7][: len(c[::7])]  # ties
    x = torch.cat([x, x[:50] + 500])
    idx, sq = nearest_codes(x, c, 1, precision=precision)
    want, want_sq = nearest_code(x, c, precision=precision)
    if precision == "exact":
        assert torch.equal(idx[:, 0], want)
    torch.testing.assert_close(sq[:, 0], want_sq, rtol=1e-4, atol=1e-3)


def test_k_equals_k_codes_sorts_everything(small_tiles):
    g = torch.Generator().manual_seed(10)
    check(torch.randn(40, 3, generator=g), torch.randn(37, 3, generator=g), 37)
    check(torch.randn(40, 3, generator=g), torch.randn(300, 3, generator=g), 300)


def test_leading_dims():
    g = torch.Generator().manual_seed(11)
    x, c = torch.randn(2, 3, 5, 4, generator=g), torch.randn(9, 4, generator=g)
    idx, sq = nearest_codes(x, c, 4)
    assert idx.shape == sq.shape == (2, 3, 5, 4)
    check(x, c, 4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs(dtype):
    g = torch.Generator().manual_seed(12)
    x, c = torch.randn(200, 24, generator=g), torch.randn(70, 24, generator=g)
    check(x.to(dtype), c.to(dtype), 6)
    check(x.to(dtype), c, 6)


def test_empty_rows():
    idx, sq = nearest_codes(torch.empty(0, 3), torch.randn(5, 3), 2)
    assert idx.shape == sq.shape == (0, 2)


def test_non_finite_codes_come_last_and_nan_rows_stay_in_range():
    g = torch.Generator().manual_seed(13)
    c = torch.randn(10, 3, generator=g)
    c[2, 1], c[6, 0] = math.nan, math.inf
    x = torch.randn(20, 3, generator=g)
    check(x, c, 10)
    idx, sq = nearest_codes(x, c, 10)
    assert idx[:, -2:].eq(torch.tensor([2, 6])).all() and sq[:, -2:].isinf().all()
    x[4, 0] = math.nan
    idx, sq = nearest_codes(x, c, 3)
    assert ((idx >= 0) & (idx < 10)).all() and sq[4].isnan().all()


@pytest.mark.parametrize("k", [0, -1, 6, 2.0, True, "3", None])
def test_bad_k(k):
    with pytest.raises(ValueError, match="k must be an int"):
        nearest_codes(torch.randn(4, 3), torch.randn(5, 3), k)


def test_bad_inputs_raise_like_nearest_code():
    with pytest.raises(ValueError, match="D="):
        nearest_codes(torch.randn(4, 3), torch.randn(5, 2), 1)
    with pytest.raises(ValueError, match="precision"):
        nearest_codes(torch.randn(4, 3), torch.randn(5, 3), 1, precision="half")


@pytest.mark.skipif(not triton_available(), reason="needs triton and CUDA or TRITON_INTERPRET=1")
def test_triton_backend_runs_the_torch_path():
    """No Triton top-k kernel yet: backend='triton' is checked, then torch's path runs."""
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(14)
    x, c = torch.randn(30, 5, generator=g).to(dev), torch.randn(20, 5, generator=g).to(dev)
    got = nearest_codes(x, c, 4, backend="triton")
    want = nearest_codes(x, c, 4, backend="torch")
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
