"""ResidualVectorQuantizer: codes, prefixes, gradients, level dropout, the model kind."""

from __future__ import annotations

import pytest
import torch

from discretae.kernels import nearest_code
from discretae.models.autoencoder import MODEL_KINDS, build_autoencoder
from discretae.quantizers.residual import ResidualVectorQuantizer


def test_encode_is_greedy_nearest_code_on_residuals():
    torch.manual_seed(0)
    q = ResidualVectorQuantizer(13, 6, levels=3, kmeans_init=False)
    z = torch.randn(5, 7, 6)
    codes = q.encode(z)
    assert codes.shape == (5, 7, 3) and codes.dtype == torch.int64
    residual = z.clone()
    for level, vq in enumerate(q.layers):
        idx = nearest_code(residual, vq.codebook)[0]
        torch.testing.assert_close(codes[..., level], idx, rtol=0, atol=0)
        residual = residual - vq.codebook[idx]
    # the decoded latent is the sum of the chosen rows; prefixes sum fewer levels
    torch.testing.assert_close(q.codes_to_latent(codes), z - residual)
    one = q.codes_to_latent(codes[..., :1])
    torch.testing.assert_close(one, q.layers[0].codebook[codes[..., 0]])
    with pytest.raises(ValueError, match="1 <= l <= 3"):
        q.codes_to_latent(torch.zeros(2, 4, dtype=torch.int64))


def test_forward_matches_encode_and_passes_gradients_straight_through():
    torch.manual_seed(1)
    q = ResidualVectorQuantizer(8, 4, levels=2)
    z = torch.randn(3, 5, 4, requires_grad=True)
    q.train()
    quantized, codes, aux, stats = q(z)
    q.eval()
    assert codes.shape == (3, 5, 2) and aux.ndim == 0 and stats["usage"].shape == (8,)
    torch.testing.assert_close(quantized.detach(), q.codes_to_latent(codes))
    (quantized.sum() + 0 * aux).backward()
    torch.testing.assert_close(z.grad, torch.ones_like(z))
    torch.testing.assert_close(q.encode(z), q(z)[1], rtol=0, atol=0)


def test_level_dropout_decodes_prefixes_in_training_only():
    torch.manual_seed(2)
    # no EMA update or dead-code revival, so the codebooks stay as they are in training
    q = ResidualVectorQuantizer(
        8, 4, levels=3, level_dropout=1.0, kmeans_init=False, ema=False, dead_code_threshold=0
    )
    z = torch.randn(64, 2, 2, 4)
    q.train()
    quantized, codes, _, _ = q(z)
    sums = [q.codes_to_latent(codes[..., :k]) for k in (1, 2, 3)]
    used = set()
    for i in range(64):  # every input decodes one prefix, the same for all its cells
        match = [k for k, s in enumerate(sums, 1) if torch.allclose(quantized[i], s[i])]
        assert match, i
        used.add(match[-1])
    assert used == {1, 2, 3}
    q.eval()
    torch.testing.assert_close(q(z)[0], sums[2])
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="level_dropout"):
            ResidualVectorQuantizer(8, 4, level_dropout=bad)
    with pytest.raises(ValueError, match="levels"):
        ResidualVectorQuantizer(8, 4, levels=0)


def test_rvq_model_kind_builds_and_round_trips_its_config():
    assert "rvq" in MODEL_KINDS
    m = build_autoencoder(
        "rvq", (1, 8, 8), latent="grid", n_codes=5, quantizer_options={"levels": 2}
    )
    assert m.code_shape == (4, 4, 2)
    again = build_autoencoder(**m.config)
    again.load_state_dict(m.state_dict())
    x = torch.rand(3, 1, 8, 8)
    torch.testing.assert_close(m.encode(x), again.encode(x), rtol=0, atol=0)
    assert m.decode(m.encode(x)).shape == x.shape
