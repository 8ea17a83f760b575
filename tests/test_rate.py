"""Rate-aware code choice (compress --rate-weight): fewer bytes, valid archives, the
choice itself, refusals, the CLI. Tiny 8x8 digits models, one epoch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _small_models import fit_small
from typer.testing import CliRunner

from discretae.cli.app import app
from discretae.commands import compress
from discretae.compression.codec import Codec, save_prior
from discretae.compression.fitting import fit_prior
from discretae.compression.rate import RateAwareEncoder, cell_scale
from discretae.core.errors import DiscretaeError
from discretae.data.datasets import load_dataset
from discretae.estimator.discrete_autoencoder import DiscreteAutoencoder

runner = CliRunner()
N_TRAIN = 400


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return np.rint(load_dataset("digits").to_array() * 255).astype(np.uint8)


def fit(x, model="rvq", **kw) -> DiscreteAutoencoder:
    return fit_small(x, model, **{"n_codes": 32, "epochs": 2, **kw})


@pytest.fixture(scope="module")
def est(digits):
    return fit(digits[:N_TRAIN])


@pytest.fixture(scope="module")
def prior(est, digits):
    return fit_prior(est, digits[:N_TRAIN])


def as_float(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x).float() / 255


def latent_error(est, x, sym) -> float:
    with torch.inference_mode():
        z = est.model_.latent(as_float(x))
        q = est.model_.quantizer.codes_to_latent(torch.from_numpy(sym))
    return float((z - q).square().sum())


def test_weight_zero_keeps_the_nearest_codes(est, prior, digits):
    x = digits[N_TRAIN:]
    codec = Codec(est, prior)
    assert codec.rate_weight == 0.0
    np.testing.assert_array_equal(codec.encode_images(as_float(x)), codec.symbols(est.transform(x)))
    # a tiny weight breaks no tie that matters: almost every code stays the nearest
    tiny = Codec(est, prior, rate_weight=1e-9).encode_images(as_float(x))
    assert np.mean(tiny == codec.encode_images(as_float(x))) > 0.99


def test_more_weight_fewer_bytes_and_more_latent_error(est, prior, digits):
    x = digits[N_TRAIN:]
    sizes, errors = [], []
    for w in (0.0, 0.1, 1.0, 10.0):
        codec = Codec(est, prior, rate_weight=w)
        sym = codec.encode_images(as_float(x))
        data = codec.encode_codes(codec.to_codes_prefix(sym))
        decoded, _, _ = codec.decode_archive(data)
        np.testing.assert_array_equal(decoded, sym)  # the archive holds what was chosen
        sizes.append(len(data))
        errors.append(latent_error(est, x, sym))
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] < 0.9 * sizes[0]
    assert errors == sorted(errors)


def test_each_choice_minimises_distance_plus_weighted_bits(est, prior, digits):
    x = digits[N_TRAIN : N_TRAIN + 50]
    w = 0.5
    rate = RateAwareEncoder(est.model_, prior, w)
    sym = rate.symbols(as_float(x))
    books = [layer.codebook.detach().double() for layer in est.model_.quantizer.layers]
    probs = prior.table.astype(np.float64)
    with torch.inference_mode():
        z = est.model_.latent(as_float(x)).double()
    residual = z.clone()
    for t, book in enumerate(books):
        lam = w * cell_scale(book)
        d = ((residual[..., None, :] - book) ** 2).sum(-1).numpy()  # (n, h, w, K)
        top = np.argsort(d, axis=-1, kind="stable")[..., :8]
        for i in range(2):
            for j in range(2):
                rows = prior.slot_rows(sym, i, j, t)
                bits = -np.log2(probs[rows] / probs[rows].sum(1, keepdims=True))
                cost = d[:, i, j] + lam * bits
                cand = top[:, i, j]
                best = cand[np.arange(len(x)), np.take_along_axis(cost, cand, 1).argmin(1)]
                chosen = sym[:, i, j, t]
                # equal up to float32 rounding of the distances the kernel returns
                gap = cost[np.arange(len(x)), chosen] - cost[np.arange(len(x)), best]
                assert np.all(gap <= 1e-5 * (1 + np.abs(cost[np.arange(len(x)), best])))
        residual = residual - book[torch.from_numpy(sym[..., t])]


def test_vq_models_take_it_and_other_kinds_are_refused(digits):
    vq = fit(digits[:200], model="vq")
    codec = Codec(vq, fit_prior(vq, digits[:200]), rate_weight=1.0)
    sym = codec.encode_images(as_float(digits[200:300]))
    assert sym.shape == (100, 2, 2, 1)
    binary = fit(digits[:200], model="binary", n_bits=4)
    with pytest.raises(DiscretaeError, match="vq or rvq"):
        Codec(binary, fit_prior(binary, digits[:200]), rate_weight=0.1)


def test_a_weight_needs_a_prior_and_a_valid_value(est, prior):
    with pytest.raises(DiscretaeError, match="code prior"):
        Codec(est, None, rate_weight=0.1)
    for bad in (-0.1, float("nan"), float("inf"), 101, "x", True):
        with pytest.raises(DiscretaeError, match="rate_weight"):
            Codec(est, prior, rate_weight=bad)


def test_command_and_cli(est, prior, digits, tmp_path):
    model = tmp_path / "rvq.safetensors"
    est.save(model)
    save_prior(model, prior)
    np.save(tmp_path / "x.npy", digits[N_TRAIN:, 0])
    plain = compress(str(tmp_path / "x.npy"), model=model, out=tmp_path / "a.dae", device="cpu")
    one = compress(str(tmp_path / "x.npy"), model=model, out=tmp_path / "b.dae", device="cpu",
                   rate_weight=1.0, batch_size=500)  # fmt: skip
    # batches of 7 choose the same codes: the choice is per image
    seven = compress(str(tmp_path / "x.npy"), model=model, out=tmp_path / "c.dae", device="cpu",
                     rate_weight=1.0, batch_size=7)  # fmt: skip
    assert one["rate_weight"] == 1.0 and plain["rate_weight"] == 0.0
    assert one["archive_bytes"] < plain["archive_bytes"]
    assert (tmp_path / "b.dae").read_bytes() == (tmp_path / "c.dae").read_bytes()
    assert seven["archive_bytes"] == one["archive_bytes"]
    args = ["-m", str(model), "-o", str(tmp_path / "d.dae"), "-r", "1", "--device", "cpu"]
    r = runner.invoke(app, ["compress", str(tmp_path / "x.npy"), *args, "--json"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "d.dae").read_bytes() == (tmp_path / "b.dae").read_bytes()
    r = runner.invoke(app, ["decompress", str(tmp_path / "d.dae"), "-m", str(model), "-o",
                            str(tmp_path / "rec"), "--device", "cpu", "-q"])  # fmt: skip
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["compress", str(tmp_path / "x.npy"), "-m", str(model), "-o",
                            str(tmp_path / "e.dae"), "-r", "-1"])  # fmt: skip
    assert r.exit_code != 0 and not (tmp_path / "e.dae").exists()
