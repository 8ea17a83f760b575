"""Quantizers: shapes, straight-through gradients, EMA arithmetic, revival, exactness, bf16."""

from __future__ import annotations

import pytest
import torch

from discretae import nearest_code
from discretae.quantizers import (
    BinaryQuantizer,
    GumbelQuantizer,
    VectorQuantizer,
    code_keys,
    perplexity_from_counts,
)

DIM = 12


def make(kind: str):
    if kind == "vq":
        return VectorQuantizer(7, DIM)
    if kind == "vq-grad":
        return VectorQuantizer(7, DIM, ema=False)
    if kind == "gumbel":
        return GumbelQuantizer(7, DIM)
    if kind == "gumbel-groups":
        return GumbelQuantizer(7, DIM, groups=3)
    return BinaryQuantizer(DIM)


KINDS = ["vq", "vq-grad", "gumbel", "gumbel-groups", "binary"]
CODE_TAIL = {"vq": (), "vq-grad": (), "gumbel": (), "gumbel-groups": (3,), "binary": (DIM,)}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("lead", [(5,), (2, 3, 4)])
def test_shapes_and_dtypes(kind, lead):
    torch.manual_seed(0)
    q = make(kind)
    z = torch.randn(*lead, DIM)
    quantized, codes, aux, stats = q(z)
    assert quantized.shape == z.shape and quantized.dtype == z.dtype
    assert codes.shape == lead + CODE_TAIL[kind]
    assert codes.dtype == (torch.uint8 if kind == "binary" else torch.int64)
    assert aux.ndim == 0 and torch.isfinite(aux)
    k = DIM if kind == "binary" else 7
    assert stats["usage"].shape == (k,) and not stats["usage"].requires_grad
    assert stats["perplexity"].ndim == 0 and 1.0 <= float(stats["perplexity"]) <= codes.numel()
    assert 1 <= int(stats["n_used"]) <= int(torch.tensor(lead).prod())
    if kind != "binary":
        assert int(stats["usage"].sum()) == codes.numel()
    latent = q.codes_to_latent(codes)
    assert latent.shape == z.shape and latent.dtype == torch.float32
    assert q.code_keys(codes).shape == (int(torch.tensor(lead).prod()),)


@pytest.mark.parametrize("kind", KINDS)
def test_eval_forward_matches_encode_and_codes_to_latent(kind):
    torch.manual_seed(1)
    q = make(kind)
    z = torch.randn(64, DIM)
    q.train()
    q(z)  # initialises the VQ codebook
    q.eval()
    quantized, codes, _, _ = q(z)
    assert torch.equal(codes, q.encode(z))
    torch.testing.assert_close(quantized, q.codes_to_latent(codes))


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_reach_the_encoder(kind):
    torch.manual_seed(2)
    encoder = torch.nn.Linear(5, DIM)
    q = make(kind)
    x = torch.randn(40, 5)
    quantized, _, aux, _ = q(encoder(x))
    target = torch.randn_like(quantized)
    loss = (quantized - target).pow(2).mean() + aux
    loss.backward()
    assert encoder.weight.grad is not None and encoder.weight.grad.abs().sum() > 0
    if kind in ("vq-grad", "gumbel", "gumbel-groups"):
        assert q.codebook.grad is not None and q.codebook.grad.abs().sum() > 0


def test_vq_straight_through_gradient_is_identity():
    q = VectorQuantizer(4, 3, commitment=0.0)
    z = torch.randn(10, 3, requires_grad=True)
    quantized, *_ = q(z)
    g = torch.randn(10, 3)
    quantized.backward(g)
    torch.testing.assert_close(z.grad, g)


def test_ema_update_matches_hand_computation():
    q = VectorQuantizer(2, 1, decay=0.5, eps=0.0, kmeans_init=False, dead_code_threshold=0.0)
    q.set_codebook(torch.tensor([[0.0], [10.0]]), torch.tensor([1.0, 1.0]))
    z = torch.tensor([[1.0], [2.0], [9.0]])
    _, codes, _, stats = q(z)
    assert codes.tolist() == [0, 0, 1]
    assert stats["usage"].tolist() == [2.0, 1.0]
    # count: 0.5 * 1 + 0.5 * [2, 1] = [1.5, 1.0]; sum: 0.5 * [0, 10] + 0.5 * [3, 9] = [1.5, 9.5]
    torch.testing.assert_close(q.ema_count, torch.tensor([1.5, 1.0]))
    torch.testing.assert_close(q.ema_sum, torch.tensor([[1.5], [9.5]]))
    torch.testing.assert_close(q.codebook, torch.tensor([[1.0], [9.5]]))
    # the returned codes used the codebook from before the update
    q.eval()
    before = q.codebook.clone()
    q(z)
    torch.testing.assert_close(q.codebook, before)


def test_ema_update_with_laplace_smoothing():
    eps = 0.1
    q = VectorQuantizer(3, 2, decay=0.9, eps=eps, kmeans_init=False, dead_code_threshold=0.0)
    start = torch.tensor([[0.0, 0.0], [5.0, 5.0], [-5.0, 5.0]])
    q.set_codebook(start, torch.tensor([2.0, 3.0, 4.0]))
    z = torch.tensor([[0.5, 0.0], [4.0, 5.0], [6.0, 6.0], [0.0, -1.0]])
    q(z)
    counts = torch.tensor([2.0, 2.0, 0.0])
    sums = torch.tensor([[0.5, -1.0], [10.0, 11.0], [0.0, 0.0]])
    ema_count = 0.9 * torch.tensor([2.0, 3.0, 4.0]) + 0.1 * counts
    ema_sum = 0.9 * start * torch.tensor([[2.0], [3.0], [4.0]]) + 0.1 * sums
    n = ema_count.sum()
    smoothed = (ema_count + eps) / (n + 3 * eps) * n
    torch.testing.assert_close(q.codebook, ema_sum / smoothed[:, None])


def test_dead_code_revival():
    torch.manual_seed(3)
    q = VectorQuantizer(3, 2, decay=0.5, kmeans_init=False, dead_code_threshold=1.0)
    q.set_codebook(torch.tensor([[-1.0, 0.0], [1.0, 0.0], [1000.0, 1000.0]]), torch.ones(3) * 4)
    data = torch.randn(64, 2) * 0.3 + torch.tensor([[0.0, 0.0]])
    for _ in range(4):
        _, codes, _, _ = q(data)
    # code 2 was never chosen, its count decayed below 1 and it was re-seeded from the data
    assert q.codebook[2].abs().max() < 5.0
    q.eval()
    assert (q(data)[1] == 2).any()


def test_dead_code_revival_off():
    q = VectorQuantizer(2, 1, decay=0.5, kmeans_init=False, dead_code_threshold=0.0)
    q.set_codebook(torch.tensor([[0.0], [1000.0]]))
    for _ in range(5):
        q(torch.zeros(8, 1))
    assert float(q.codebook[1, 0]) > 100.0


def test_vq_kmeans_init_finds_separated_blobs():
    torch.manual_seed(4)
    centers = torch.tensor([[10.0, 0.0], [0.0, 10.0], [-10.0, -10.0]])
    z = (centers[:, None, :] + 0.1 * torch.randn(3, 50, 2)).reshape(-1, 2)
    q = VectorQuantizer(3, 2, dead_code_threshold=0.0)
    assert not bool(q.initialized)
    q(z)
    assert bool(q.initialized)
    d = torch.cdist(centers, q.codebook)
    assert float(d.min(1).values.max()) < 0.5


@pytest.mark.parametrize("groups", [1, 2])
def test_gumbel_hard_inference_is_nearest_code(groups):
    torch.manual_seed(5)
    q = GumbelQuantizer(9, 8, groups=groups)
    q.eval()
    z = torch.randn(200, 8) * 2
    _, codes, _, _ = q(z)
    cb = q.codebook.detach()
    zg = z.reshape(200, groups, 8 // groups)
    expected = torch.stack([nearest_code(zg[:, g], cb[g])[0] for g in range(groups)], 1)
    assert torch.equal(codes.reshape(200, groups), expected)
    # and it is the argmax of the logits (negative squared distances), in float64
    d = ((zg.double()[:, :, None, :] - cb.double()[None]) ** 2).sum(-1)
    assert torch.equal(expected, (-d).argmax(-1))


def test_gumbel_training_samples_and_anneals():
    torch.manual_seed(6)
    q = GumbelQuantizer(5, 4, tau_start=2.0, tau_end=0.2)
    # z = 0: the logits are minus the squared norms of the codes; the Gumbel-max trick
    # draws each code with probability softmax(logits), whatever the temperature
    z = torch.zeros(20000, 4)
    expected = torch.softmax(q.logits(z[:1])[0, 0].detach(), -1)
    _, codes, _, stats = q(z)
    freq = torch.bincount(codes, minlength=5).float() / len(codes)
    assert (freq - expected).abs().max() < 0.015, (freq, expected)
    assert int(stats["n_used"]) == 5
    assert not torch.equal(codes, q(z)[1])  # fresh noise at every call
    q.eval()
    assert torch.equal(q(z)[1], torch.full_like(codes, int(expected.argmax())))
    q.set_progress(0.0)
    assert q.tau == pytest.approx(2.0)
    q.set_progress(0.5)
    assert q.tau == pytest.approx((2.0 * 0.2) ** 0.5)
    q.set_progress(1.0)
    assert q.tau == pytest.approx(0.2)


def test_gumbel_kl_regulariser_is_zero_when_uniform():
    q = GumbelQuantizer(4, 2, kl_weight=1.0)
    with torch.no_grad():
        q.codebook.copy_(torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]]))
    z = torch.tensor([[3.0, 0.0], [0.0, 3.0], [-3.0, 0.0], [0.0, -3.0]])
    q.eval()
    assert float(q(z)[2].detach()) == pytest.approx(0.0, abs=1e-6)
    collapsed = torch.tensor([[3.0, 0.0]] * 4)
    assert float(q(collapsed)[2].detach()) > 0.5


def test_binary_codes_are_sigmoid_threshold():
    q = BinaryQuantizer(6).eval()
    z = torch.randn(100, 6) * 3
    z[0] = torch.tensor([0.0, 1e-9, -1e-9, 1e-6, -1e-6, 40.0])
    quantized, codes, _, stats = q(z)
    expected = (torch.sigmoid(z) > 0.5).to(torch.uint8)
    assert torch.equal(codes, expected)
    assert torch.equal(q.encode(z), expected)
    assert torch.equal(quantized, expected.float())
    assert torch.equal(stats["usage"], expected.float().sum(0))


def test_binary_stochastic_bits_follow_the_sigmoid():
    torch.manual_seed(7)
    p = torch.tensor([0.02, 0.2, 0.5, 0.7, 0.97])
    q = BinaryQuantizer(5, stochastic=True)
    z = torch.logit(p).expand(20000, 5).contiguous()
    quantized, codes, _, stats = q(z)
    # each bit is Bernoulli(sigmoid(z)): the rate of ones matches p (4 sigma is < 0.015)
    rate = codes.float().mean(0)
    assert (rate - p).abs().max() < 0.015, rate
    both = (codes[:, 1] & codes[:, 3]).float().mean()  # independent bits: p1 * p3
    assert abs(both - p[1] * p[3]) < 0.015, both
    assert torch.equal(stats["usage"], codes.float().sum(0))
    assert torch.equal(quantized, codes.float())
    # independent draws: two passes disagree on about half the bits where p = 0.5
    again = q(z)[1]
    differ = (codes[:, 2] != again[:, 2]).float().mean()
    assert 0.45 < differ < 0.55, differ
    q.eval()  # inference thresholds: no noise, the same bits every time
    expected = (p > 0.5).to(torch.uint8).expand(20000, 5)
    assert torch.equal(q(z)[1], expected) and torch.equal(q(z)[1], expected)


def test_binary_balance_regulariser():
    q = BinaryQuantizer(2, balance_weight=1.0)
    assert float(q(torch.tensor([[5.0, -5.0], [-5.0, 5.0]]))[2]) < 1e-3
    assert float(q(torch.full((4, 2), 5.0))[2]) > 0.2


@pytest.mark.parametrize("kind", KINDS)
def test_bf16_autocast_has_no_nans(kind):
    torch.manual_seed(8)
    encoder = torch.nn.Linear(5, DIM)
    q = make(kind)
    x = torch.randn(64, 5) * 4
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = encoder(x)
        assert z.dtype == torch.bfloat16
        quantized, codes, aux, stats = q(z)
        loss = quantized.float().pow(2).mean() + aux
    assert quantized.dtype == torch.bfloat16
    assert torch.isfinite(quantized.float()).all() and torch.isfinite(aux)
    assert torch.isfinite(stats["perplexity"])
    loss.backward()
    assert torch.isfinite(encoder.weight.grad).all()
    if hasattr(q, "codebook") and isinstance(q.codebook, torch.nn.Parameter):
        assert q.codebook.dtype == torch.float32


@pytest.mark.parametrize("kind", KINDS)
def test_wrong_latent_dim_raises(kind):
    with pytest.raises(ValueError, match=str(DIM)):
        make(kind)(torch.randn(3, DIM + 1))


def test_bad_construction_raises():
    with pytest.raises(ValueError, match="n_codes"):
        VectorQuantizer(0, 4)
    with pytest.raises(ValueError, match="multiple of groups"):
        GumbelQuantizer(4, 5, groups=2)
    with pytest.raises(ValueError, match="decay"):
        VectorQuantizer(4, 4, decay=1.5)
    with pytest.raises(ValueError, match="n_bits"):
        BinaryQuantizer(0)


def test_code_keys_and_perplexity():
    rows = torch.tensor([[0, 1, 1], [1, 1, 0], [0, 1, 1], [1, 0, 0]])
    keys = code_keys(rows, 2)
    assert keys[0] == keys[2] and len(set(keys.tolist())) == 3
    wide = torch.randint(0, 2, (500, 80))  # 2**80 does not fit: hashed keys
    wide[1] = wide[0]
    hashed = code_keys(wide, 2)
    assert hashed[0] == hashed[1] and len(set(hashed.tolist())) == len(torch.unique(wide, dim=0))
    assert float(perplexity_from_counts(torch.tensor([5.0, 5.0, 5.0, 5.0]))) == pytest.approx(4.0)
    assert float(perplexity_from_counts(torch.tensor([9.0, 0.0, 0.0]))) == pytest.approx(1.0)
