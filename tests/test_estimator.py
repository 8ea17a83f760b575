"""DiscreteAutoencoder: clustering on digits, shapes, layouts, errors, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import sklearn.exceptions
import torch
from scipy import sparse
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.metrics import normalized_mutual_info_score

import discretae
from discretae.core.errors import DiscretaeError, NotFittedError
from discretae.estimator.discrete_autoencoder import DiscreteAutoencoder
from discretae.estimator.parameters import PARAMETER_CONSTRAINTS, check_parameters
from discretae.models.autoencoder import build_autoencoder


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    return (d.data / 16.0).reshape(-1, 8, 8), d.target


@pytest.fixture(scope="module")
def small():
    rng = np.random.default_rng(0)
    return rng.random((40, 12, 10)).astype(np.float32)


FIT_FAST = dict(epochs=10, batch_size=64)


@pytest.mark.parametrize("kind", ["vq", "gumbel", "binary"])
def test_digits_clusters_carry_label_information(digits, kind):
    X, y = digits
    est = DiscreteAutoencoder(model=kind, **FIT_FAST).fit(X)
    pred = est.predict(X)
    assert pred.shape == (len(X),) and pred.dtype == np.int64
    assert 0 <= pred.min() and pred.max() < est.n_clusters_ == 10
    assert normalized_mutual_info_score(y, pred) > 0.4
    assert np.array_equal(est.labels_, pred)
    last = est.history_[-1]
    assert set(last) == {"epoch", "loss", "recon", "aux", "usage", "perplexity", "seconds"}
    assert len(est.history_) == 10 and last["loss"] < est.history_[0]["loss"]
    if kind == "binary":
        assert est.kmeans_ is not None and est.cluster_centers_.shape == (10, 16)
    else:
        assert est.kmeans_ is None  # the code is the cluster id
        assert np.array_equal(est.transform(X), pred)


@pytest.mark.parametrize(
    "params, code_shape, dtype",
    [
        (dict(model="vq", n_codes=6), (), np.int64),
        (dict(model="gumbel", quantizer_options={"groups": 2}), (2,), np.int64),
        (dict(model="binary", n_bits=5), (5,), np.uint8),
        (dict(model="vq", latent="grid"), (6, 5), np.int64),
        (dict(model="gumbel", latent="grid", grid=(3, 2)), (3, 2), np.int64),
        (dict(model="binary", latent="grid", n_bits=3), (6, 5, 3), np.uint8),
    ],
)
def test_codes_shapes_and_round_trip_shapes(small, params, code_shape, dtype):
    est = DiscreteAutoencoder(epochs=1, batch_size=16, n_clusters=3, **params).fit(small)
    codes = est.transform(small)
    assert codes.shape == (40, *code_shape) and codes.dtype == dtype
    assert est.code_shape_ == code_shape
    assert est.input_shape_ == (1, 12, 10) and est.n_features_in_ == 120
    recon = est.inverse_transform(codes)
    assert recon.shape == (40, 12, 10) and recon.dtype == np.float32
    assert recon.min() >= 0.0 and recon.max() <= 1.0
    pred = est.predict(small)
    assert pred.dtype == np.int64 and pred.max() < est.n_clusters_ == 3


def test_layouts_dtypes_and_streaming_agree():
    rng = np.random.default_rng(1)
    X = rng.integers(0, 256, size=(30, 9, 11, 3), dtype=np.uint8)
    est = DiscreteAutoencoder(model="binary", n_bits=8, epochs=1, batch_size=8).fit(X)
    assert est.input_shape_ == (3, 9, 11)
    codes = est.transform(X)
    assert np.array_equal(est.transform(X.astype(np.float32) / 255), codes)
    assert np.array_equal(est.transform(np.ascontiguousarray(X.transpose(0, 3, 1, 2))), codes)
    assert np.array_equal(est.transform(torch.from_numpy(X)), codes)
    x = torch.from_numpy(X).permute(0, 3, 1, 2).float() / 255
    assert np.array_equal(est.encode_batch(x).numpy(), codes)
    recon = est.inverse_transform(codes)
    assert recon.shape == (30, 9, 11, 3)
    decoded = est.decode_batch(torch.from_numpy(codes))
    assert decoded.shape == (30, 3, 9, 11)
    np.testing.assert_allclose(decoded.permute(0, 2, 3, 1).numpy(), recon, atol=1e-6)


def test_flat_input_uses_the_mlp(digits):
    X, y = digits
    flat = X.reshape(len(X), -1)
    est = DiscreteAutoencoder(model="gumbel", epochs=2).fit(flat[:300])
    assert est.input_shape_ == (64,)
    assert type(est.model_.encoder).__name__ == "MLPEncoder"
    assert est.inverse_transform(est.transform(flat[:7])).shape == (7, 64)
    with pytest.raises(DiscretaeError, match="grid"):
        DiscreteAutoencoder(latent="grid", epochs=1).fit(flat[:50])


def test_deterministic_for_a_seed(small):
    a = DiscreteAutoencoder(model="gumbel", epochs=2, batch_size=8, random_state=3).fit(small)
    b = DiscreteAutoencoder(model="gumbel", epochs=2, batch_size=8, random_state=3).fit(small)
    c = DiscreteAutoencoder(model="gumbel", epochs=2, batch_size=8, random_state=4).fit(small)
    assert [h["loss"] for h in a.history_] == [h["loss"] for h in b.history_]
    for pa, pb in zip(a.model_.parameters(), b.model_.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert [h["loss"] for h in a.history_] != [h["loss"] for h in c.history_]


def test_fit_leaves_the_global_rng_alone(small):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    DiscreteAutoencoder(model="vq", epochs=1, batch_size=8).fit(small)
    assert torch.equal(torch.rand(3), expected)


def test_callback_gets_every_step(small):
    events = []
    DiscreteAutoencoder(model="vq", epochs=2, batch_size=16, callback=events.append).fit(small)
    assert len(events) == 2 * 3
    assert set(events[0]) == {
        "epoch", "epochs", "step", "steps_per_epoch", "loss", "usage", "perplexity"
    }  # fmt: skip
    assert [(e["epoch"], e["step"]) for e in events[:4]] == [(1, 1), (1, 2), (1, 3), (2, 1)]
    assert events[0]["epochs"] == 2 and events[0]["steps_per_epoch"] == 3
    assert all(np.isfinite(e["loss"]) and e["usage"] >= 1 for e in events)


def test_callback_usage_counts_the_epoch_so_far(small):
    """The progress bar's "codes used" grows through an epoch and ends at the epoch's
    count in the history, not at the last (smaller) batch's."""
    events = []
    est = DiscreteAutoencoder(
        model="vq", n_codes=64, epochs=2, batch_size=16, callback=events.append
    )
    est.fit(small)
    for epoch, hist in enumerate(est.history_, 1):
        used = [e["usage"] for e in events if e["epoch"] == epoch]
        assert used == sorted(used)
        assert used[-1] == hist["usage"]
    # the last batch holds 40 - 2 * 16 = 8 images: more codes than that came from all
    assert events[-1]["usage"] > 8


def test_not_fitted_errors(small):
    est = DiscreteAutoencoder()
    for call in (est.transform, est.predict, est.inverse_transform):
        with pytest.raises(NotFittedError, match="not fitted yet; call fit first"):
            call(small)
    with pytest.raises(NotFittedError):
        est.save("never-written.safetensors")
    # discretae's public name catches it, and so does scikit-learn's own class
    for caught in (discretae.NotFittedError, sklearn.exceptions.NotFittedError):
        with pytest.raises(caught, match="not fitted yet"):
            est.predict(small)


def test_bad_input_errors(small):
    est = DiscreteAutoencoder(model="vq", epochs=1, batch_size=16).fit(small)
    with pytest.raises(DiscretaeError, match=r"fitted on \(1, 12, 10\)"):
        est.transform(np.zeros((4, 12, 11), np.float32))
    with pytest.raises(DiscretaeError, match="5 dims"):
        est.predict(np.zeros((2, 1, 1, 12, 10)))
    bad = small.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(DiscretaeError, match="NaN"):
        DiscreteAutoencoder(epochs=1).fit(bad)
    with pytest.raises(DiscretaeError, match=r"\[0, 1\]"):
        DiscreteAutoencoder(epochs=1).fit(small * 16)
    with pytest.raises(DiscretaeError, match="uint8"):
        DiscreteAutoencoder(epochs=1).fit((small * 16).astype(np.int64))
    with pytest.raises(DiscretaeError, match="channel"):
        DiscreteAutoencoder(epochs=1).fit(np.zeros((3, 5, 6, 7), np.float32))
    with pytest.raises(DiscretaeError, match=r"shape \(N\)"):
        est.inverse_transform(np.zeros((3, 2), np.int64))
    with pytest.raises(DiscretaeError, match=r"\[0, 9\]"):
        est.inverse_transform(np.array([0, 10]))
    with pytest.raises(DiscretaeError, match="integers"):
        est.inverse_transform(np.array([0.5, 1.0]))


def test_input_refusals_use_scikit_learn_words(small):
    est = DiscreteAutoencoder(model="vq", epochs=1, batch_size=16).fit(small)
    flat = DiscreteAutoencoder(model="vq", epochs=1, batch_size=16).fit(small[:, 0])
    refusals = [
        (est.fit, sparse.csr_matrix(small[:, 0]), "sparse input is not supported"),
        (est.predict, torch.zeros(2, 10).to_sparse(), "sparse input is not supported"),
        (est.fit, small[:, 0] + 0j, "Complex data not supported"),
        (est.fit, np.zeros((4, 0)), r"0 feature\(s\) \(shape=\(4, 0\)\) while a minimum"),
        (est.fit, -small, "Negative values in data"),
        (est.predict, small[0, 0], "Reshape your data"),
        (flat.predict, small[:, 0, :4], "X has 4 features, but DiscreteAutoencoder is "
         "expecting 10 features as input"),
    ]  # fmt: skip
    for call, X, message in refusals:
        with pytest.raises(DiscretaeError, match=message):
            call(X)


def test_tags_say_what_the_estimator_takes():
    tags = DiscreteAutoencoder(device="cpu").__sklearn_tags__()
    assert tags.input_tags.positive_only and tags.input_tags.three_d_array
    assert not tags.input_tags.sparse and not tags.input_tags.allow_nan
    assert not tags.target_tags.required and tags.transformer_tags.preserves_dtype == []
    assert not tags.non_deterministic  # a fixed seed repeats a CPU fit
    assert DiscreteAutoencoder(device="cuda").__sklearn_tags__().non_deterministic


def test_the_parameter_table_names_every_parameter():
    assert set(PARAMETER_CONSTRAINTS) == set(DiscreteAutoencoder().get_params())
    check_parameters(DiscreteAutoencoder(n_codes=np.int64(3), epochs=np.int32(2)).get_params())


@pytest.mark.parametrize(
    "params, message",
    [
        (dict(n_codes=0), "n_codes must be an integer >= 1"),
        (dict(batch_size=True), "batch_size must be an integer >= 1"),
        (dict(n_clusters=2.0), "n_clusters must be an integer >= 1"),
        (dict(random_state=1.5), "random_state must be an int or None"),
        (dict(callback=3), "callback must be callable"),
        (dict(lr_schedule="linear"), "lr_schedule="),
        (dict(model="pq"), "valid models: vq, gumbel, binary"),
        (dict(latent="patch"), "latent"),
        (dict(epochs=0), "epochs"),
        (dict(lr=-1.0), "lr"),
        (dict(device="tpu9"), "device"),
        (dict(grid=(20, 2), latent="grid"), "larger than the image"),
        (dict(model="gumbel", quantizer_options={"groups": 3}, latent_dim=8), "multiple"),
        (dict(model="vq", quantizer_options={"colour": 1}), "quantizer_options"),
    ],
)
def test_bad_params_raise_in_fit_not_init(small, params, message):
    est = DiscreteAutoencoder(**params)  # __init__ validates nothing
    with pytest.raises(DiscretaeError, match=message):
        est.fit(small)


def test_sklearn_conventions():
    est = DiscreteAutoencoder(model="binary", n_bits=4)
    assert clone(est).get_params()["n_bits"] == 4
    assert DiscreteAutoencoder().get_params()["model"] == "gumbel"


def test_registry_rejects_unknown_kinds():
    with pytest.raises(ValueError, match="valid kinds: vq, gumbel, binary"):
        build_autoencoder("pq", (1, 8, 8))


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 13, 21), (4, 28, 28), (1, 33, 17), (20,)])
@pytest.mark.parametrize("kind", ["vq", "gumbel", "binary"])
def test_autoencoder_any_size(shape, kind):
    torch.manual_seed(0)
    latent = "global" if len(shape) == 1 else "grid"
    model = build_autoencoder(kind, shape, latent=latent, n_codes=5)
    x = torch.rand(2, *shape)
    out = model(x)
    assert out["x_hat"].shape == x.shape and out["recon_loss"].ndim == 0
    out["recon_loss"].backward()
    rebuilt = build_autoencoder(**model.config)
    rebuilt.load_state_dict(model.state_dict())
    model.eval()
    codes = model.encode(x)
    assert codes.shape == (2, *model.code_shape)
    assert model.decode(codes).shape == x.shape
    assert torch.equal(rebuilt.eval().encode(x), codes)


def test_autoencoder_bf16_autocast_has_no_nans():
    torch.manual_seed(0)
    for kind in ("vq", "gumbel", "binary"):
        model = build_autoencoder(kind, (1, 12, 12), latent="grid", n_codes=8)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(torch.rand(4, 1, 12, 12))
            loss = out["recon_loss"] + out["aux_loss"]
        assert torch.isfinite(loss)
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize(
    "c_in, c_out, hw", [(5, 1, (7, 9)), (6, 3, (4, 4)), (3, 4, (1, 6)), (4, 8, (3, 5))]
)
def test_upsample_without_gradients_is_the_transposed_convolution(monkeypatch, c_in, c_out, hw):
    from discretae.models.networks import Upsample

    torch.manual_seed(0)
    up = Upsample(c_in, c_out)
    x = torch.randn(3, c_in, *hw)
    want = torch.nn.functional.conv_transpose2d(x, up.weight, up.bias, stride=2, padding=1)
    shuffles = []
    shuffle = torch.nn.functional.pixel_shuffle
    monkeypatch.setattr(
        torch.nn.functional, "pixel_shuffle", lambda y, r: shuffles.append(r) or shuffle(y, r)
    )
    with torch.no_grad():
        got = up(x)
    # the image layer (few output channels) takes the pixel-shuffle way, others not
    assert shuffles == ([2] if c_out <= Upsample.SHUFFLE_MAX_OUT else [])
    assert got.shape == want.shape == (3, c_out, 2 * hw[0], 2 * hw[1])
    torch.testing.assert_close(got, want.detach(), rtol=1e-5, atol=1e-5)
    # with gradients it is the transposed convolution itself, and trains
    out = up(x)
    assert torch.equal(out, want) and len(shuffles) <= 1
    out.sum().backward()
    assert up.weight.grad is not None
    # the parameters (and so model files) are a ConvTranspose2d's
    plain = torch.nn.ConvTranspose2d(c_in, c_out, 4, 2, 1)
    assert up.state_dict().keys() == plain.state_dict().keys()


def test_light_decoder_trains_saves_and_is_smaller(tmp_path):
    from discretae.core.serialization import read_model_file, write_model_file

    x = np.random.default_rng(0).random((64, 16, 16, 3)).astype(np.float32)
    light = DiscreteAutoencoder("vq", n_codes=4, epochs=1, batch_size=32, decoder="light").fit(x)
    full = DiscreteAutoencoder("vq", n_codes=4, epochs=1, batch_size=32).fit(x)
    assert light.model_.config["decoder"] == "light" and full.model_.config["decoder"] == "full"
    # no full-resolution stage: the last layer is the transposed convolution to RGB
    last = light.model_.decoder.body[-1]
    assert isinstance(last, torch.nn.ConvTranspose2d) and last.out_channels == 3
    n_params = [sum(p.numel() for p in e.model_.decoder.parameters()) for e in (light, full)]
    assert n_params[0] < n_params[1]
    assert light.inverse_transform(light.transform(x)).shape == (64, 16, 16, 3)
    path = tmp_path / "light.safetensors"
    light.save(path)
    again = DiscreteAutoencoder.load(path)
    assert again.decoder == "light"
    np.testing.assert_array_equal(again.transform(x), light.transform(x))
    # a model file from before the setting has no "decoder" in its config: the full one
    full.save(path)
    tensors, config = read_model_file(path)
    del config["model"]["decoder"]
    write_model_file(path, tensors, config)
    np.testing.assert_array_equal(DiscreteAutoencoder.load(path).transform(x), full.transform(x))
    with pytest.raises(DiscretaeError, match="decoder='tiny'"):
        DiscreteAutoencoder(decoder="tiny", epochs=1).fit(x)


def test_precision_bfloat16_trains_the_networks_in_bfloat16_and_repeats(tmp_path):
    from discretae.core.devices import training_dtype

    x = np.random.default_rng(0).random((64, 16, 16, 3)).astype(np.float32)
    seen = []

    def fit(precision):
        est = DiscreteAutoencoder("gumbel", n_codes=4, epochs=2, batch_size=32, precision=precision)
        return est.fit(x)

    # what the first convolution computes in, during training and after it
    hook = torch.nn.Conv2d.forward

    def spy(self, inp):
        out = hook(self, inp)
        seen.append((self.training, out.dtype))
        return out

    torch.nn.Conv2d.forward = spy
    try:
        a = fit("bfloat16")
        trained, seen[:] = set(seen), []
        codes = a.transform(x)
        encoded = set(seen)
    finally:
        torch.nn.Conv2d.forward = hook
    # fit trains in bfloat16, then encodes its data in float32 for the labels
    assert trained == {(True, torch.bfloat16), (False, torch.float32)}
    assert encoded == {(False, torch.float32)}
    assert a.model_.low_precision is None  # only while training
    np.testing.assert_array_equal(fit("bfloat16").transform(x), codes)  # a seed repeats
    path = tmp_path / "bf.safetensors"
    a.save(path)
    assert DiscreteAutoencoder.load(path).precision == "bfloat16"
    assert training_dtype("auto", "cuda") is None
    assert training_dtype("auto", "cpu", recipe=False) is None  # compression models: float32
    assert DiscreteAutoencoder("vq", epochs=1).fit(x).history_  # auto, not the recipe
    assert training_dtype("float32", "cpu") is None
    assert training_dtype("bfloat16", "cpu") is torch.bfloat16
    with pytest.raises(DiscretaeError, match="precision='half'"):
        DiscreteAutoencoder(precision="half", epochs=1).fit(x)


def test_recipe_steps_are_capped_by_pixels_and_large_data_keeps_its_epochs():
    from discretae.estimator.recipe import (
        RECIPE_MAX_PIXELS,
        RECIPE_MIN_EPOCHS,
        RECIPE_STEPS,
        recipe_epochs,
    )

    # 8x8 digits: under the cap, the full 2000 steps (8 steps an epoch)
    assert recipe_epochs(8, 256, 64) * 8 == RECIPE_STEPS
    # 32x32: the cap, rounded up to whole epochs
    capped = RECIPE_MAX_PIXELS // (256 * 1024)
    assert capped < RECIPE_STEPS
    assert capped <= recipe_epochs(8, 256, 1024) * 8 < capped + 8
    # a smaller batch takes more steps for the same pixels
    assert recipe_epochs(16, 128, 1024) * 16 >= 2 * capped
    # large data: at least RECIPE_MIN_EPOCHS epochs whatever the cap
    assert recipe_epochs(274, 256, 784) == RECIPE_MIN_EPOCHS
    assert recipe_epochs(391, 256, 4096) == RECIPE_MIN_EPOCHS
