"""Augmentations, the two-view objectives, the content/style split and the recipe defaults."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from discretae import DiscreteAutoencoder
from discretae.core.errors import DiscretaeError
from discretae.evaluation.metrics import nmi
from discretae.models.augment import AugmentConfig, augment
from discretae.models.autoencoder import build_autoencoder
from discretae.models.objectives import (
    CodeCritic,
    contrastive_loss,
    mutual_information_loss,
    self_label_loss,
)

OFF = AugmentConfig(rotate=0, scale=0, shear=0, translate=0, flip=0, erase=0, jitter=0, noise=0)


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    return d.images[:, None].astype(np.float32) / 16, d.target


# ---------------------------------------------------------------- augmentations
def test_augment_keeps_shape_and_range_and_differs_per_image():
    torch.manual_seed(0)
    x = torch.rand(1, 1, 16, 16).repeat(8, 1, 1, 1)
    y = augment(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert float(y.min()) >= 0 and float(y.max()) <= 1
    # the same image, transformed independently: no two copies alike
    flat = y.flatten(1)
    assert torch.cdist(flat, flat)[~torch.eye(8, dtype=torch.bool)].min() > 1e-3


def test_augment_with_everything_off_is_identity():
    x = torch.rand(4, 3, 9, 7)
    torch.testing.assert_close(augment(x, OFF), x)


def test_augment_is_repeatable_from_the_seed():
    x = torch.rand(4, 1, 12, 12)
    torch.manual_seed(3)
    a = augment(x, AugmentConfig(erase=0.5, flip=0.5))
    torch.manual_seed(3)
    b = augment(x, AugmentConfig(erase=0.5, flip=0.5))
    torch.testing.assert_close(a, b)


def test_flip_alone_mirrors_the_image():
    x = torch.rand(64, 1, 6, 6)
    y = augment(x, AugmentConfig(**{**OFF.to_dict(), "flip": 0.5}))
    same = (y - x).abs().flatten(1).amax(1) < 1e-5
    mirrored = (y - x.flip(-1)).abs().flatten(1).amax(1) < 1e-5
    assert bool((same | mirrored).all()) and 10 < int(mirrored.sum()) < 54


def test_erase_zeroes_a_rectangle():
    x = torch.ones(32, 1, 10, 10)
    y = augment(x, AugmentConfig(**{**OFF.to_dict(), "erase": 0.99}))
    zeros = (y == 0).flatten(1).sum(1)
    assert int((zeros > 0).sum()) >= 25 and int(zeros.max()) <= 25  # at most half of each side


@pytest.mark.parametrize("bad", [{"rotate": -1}, {"flip": 1.0}, {"noise": float("nan")}])
def test_augment_config_rejects_bad_ranges(bad):
    with pytest.raises(DiscretaeError):
        AugmentConfig(**bad)


def test_augment_needs_an_image_batch():
    with pytest.raises(ValueError, match="B, C, H, W"):
        augment(torch.rand(4, 16))


# ---------------------------------------------------------------- objectives
def test_mutual_information_is_log_k_for_agreeing_balanced_codes():
    k = 5
    p = torch.eye(k).repeat(20, 1)
    assert float(mutual_information_loss(p, p)) == pytest.approx(-math.log(k), abs=1e-4)
    uniform = torch.full((100, k), 1 / k)
    assert float(mutual_information_loss(uniform, uniform)) == pytest.approx(0, abs=1e-5)
    collapsed = torch.zeros(100, k)
    collapsed[:, 0] = 1
    assert float(mutual_information_loss(collapsed, collapsed)) == pytest.approx(0, abs=1e-4)


def test_mutual_information_gradient_raises_agreement():
    torch.manual_seed(0)
    logits = torch.randn(64, 4, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=0.1)
    losses = []
    for _ in range(100):
        p = logits.softmax(1)
        loss = mutual_information_loss(p, p)
        losses.append(float(loss.detach()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    # from near 0 (random soft codes) towards -log 4 = -1.386 (confident, balanced)
    assert losses[0] > -0.2 and losses[-1] < -1.3


def test_contrastive_loss_prefers_matching_views():
    torch.manual_seed(0)
    a = torch.randn(32, 16)
    matched = contrastive_loss(a, a + 0.01 * torch.randn_like(a))
    shuffled = contrastive_loss(a, a[torch.randperm(32)])
    assert float(matched) < float(shuffled) - 1.0


def test_code_critic_learns_which_code_goes_with_which_image():
    torch.manual_seed(0)
    codes = torch.randint(0, 4, (256,))
    h = torch.nn.functional.one_hot(codes, 4).float() + 0.1 * torch.randn(256, 4)
    y = torch.nn.functional.one_hot(codes, 4).float()
    critic = CodeCritic(4, 4)
    opt = torch.optim.Adam(critic.parameters(), lr=0.05)
    for _ in range(100):
        loss = critic.loss(h, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(critic.loss(h, y).detach()) < 2 * math.log(2) - 0.5


def test_self_label_loss_is_zero_without_confident_codes_and_has_a_gradient():
    l1 = torch.zeros(8, 4, requires_grad=True)  # uniform: probability 0.25 < confidence
    l2 = torch.randn(8, 4, requires_grad=True)
    loss = self_label_loss(l1, l2, confidence=0.9)
    assert float(loss.detach()) == 0.0
    loss.backward()  # the graph stays whole
    assert l2.grad is not None and float(l2.grad.abs().sum()) == 0.0


def test_self_label_loss_pulls_each_view_towards_the_other_views_confident_code():
    confident = torch.full((6, 3), -10.0)
    confident[torch.arange(6), torch.tensor([0, 0, 0, 0, 1, 2])] = 10.0
    other = torch.zeros(6, 3, requires_grad=True)
    opt = torch.optim.SGD([other], lr=1.0)
    for _ in range(50):
        loss = self_label_loss(confident, other, confidence=0.99)
        opt.zero_grad()
        loss.backward()
        opt.step()
    # the other view now gives the confident view's codes; the confident view (a
    # constant here) only learns where the other view is itself confident
    assert other.argmax(1).tolist() == [0, 0, 0, 0, 1, 2]


def test_self_label_loss_weighs_each_confident_class_alike():
    """Four rows of code 0 and one each of codes 1 and 2: balanced, a wrong row of a
    rare code costs more than a wrong row of the common one."""
    src = torch.full((6, 3), -10.0)
    src[torch.arange(6), torch.tensor([0, 0, 0, 0, 1, 2])] = 10.0
    wrong_common = src.clone()
    wrong_common[0] = src[5]  # a code-0 row answered with code 2
    wrong_rare = src.clone()
    wrong_rare[4] = src[5]  # the code-1 row answered with code 2
    a = self_label_loss(src, wrong_common, confidence=0.99)
    b = self_label_loss(src, wrong_rare, confidence=0.99)
    assert float(b) > 2 * float(a) > 0


# ---------------------------------------------------------------- model and estimator
def test_recipe_model_trains_encodes_and_decodes_the_mean_style():
    torch.manual_seed(0)
    model = build_autoencoder(
        "gumbel", (1, 8, 8), n_codes=4, style_dim=3, objectives={"critic": 1.0}
    )
    x = torch.rand(16, 1, 8, 8)
    out = model(x)
    for key in ("mi", "contrastive", "critic", "style_kl"):
        assert key in out["stats"]
    (out["recon_loss"] + out["aux_loss"]).backward()
    assert model.encoder.head[-1].weight.grad.abs().sum() > 0
    model.eval()
    codes = model.encode(x)
    assert codes.shape == (16,) and model.decode(codes).shape == x.shape


@pytest.mark.parametrize(
    "kwargs",
    [
        {"objectives": "mi,bogus"},
        {"objectives": "mi,mi"},
        {"objectives": "mi", "model": "binary"},
        {"objectives": "mi", "latent": "grid"},
        {"objectives": "none", "objective_options": {"mi": 2.0}},
        {"objectives": "mi", "objective_options": {"augment": {"rotate": -3}}},
        {"objectives": "mi", "objective_options": {"temperature": 0}},
        {"objectives": "mi,selflabel", "objective_options": {"confidence": 1.0}},
    ],
)
def test_bad_objective_settings_are_refused(kwargs, digits):
    x, _ = digits
    est = DiscreteAutoencoder(**{"model": "gumbel", "epochs": 1, **kwargs})
    with pytest.raises(DiscretaeError):
        est.fit(x[:64])


@pytest.mark.parametrize(
    "kwargs, says",
    [
        ({"objectives": "mi", "model": "binary"}, "view objectives need .* global gumbel code"),
        ({"objectives": "mi", "model": "vq"}, "view objectives need .* global gumbel code"),
        ({"objectives": "style", "latent": "grid"}, "a style latent needs a global gumbel or vq"),
    ],
)
def test_refusals_name_what_the_objective_needs(kwargs, says, digits):
    x, _ = digits
    with pytest.raises(DiscretaeError, match=says):
        DiscreteAutoencoder(**{"model": "gumbel", "epochs": 1, **kwargs}).fit(x[:64])


def test_auto_turns_the_recipe_on_only_for_a_global_gumbel_code_on_images():
    est = DiscreteAutoencoder("gumbel")
    assert est._objective_names((1, 8, 8)) == ["mi", "contrastive", "selflabel", "style"]
    assert est._objective_names((64,)) == []
    assert DiscreteAutoencoder("vq")._objective_names((1, 8, 8)) == []
    grouped = DiscreteAutoencoder("gumbel", quantizer_options={"groups": 2})
    assert grouped._objective_names((1, 8, 8)) == []
    m = est._build((1, 8, 8))
    assert est._schedule(m, 1797) == (250, 2e-3)  # 8 steps of 256 per epoch
    assert est._schedule(m, 70000)[0] == 12
    plain = DiscreteAutoencoder("gumbel", objectives="none")
    assert plain._schedule(plain._build((1, 8, 8)), 1797) == (30, 1e-3)


def test_recipe_model_saves_and_loads_with_the_same_codes(digits, tmp_path):
    x, _ = digits
    est = DiscreteAutoencoder("gumbel", epochs=1, random_state=0, device="cpu").fit(x[:300])
    path = tmp_path / "m.safetensors"
    est.save(path)
    back = DiscreteAutoencoder.load(path, device="cpu")
    np.testing.assert_array_equal(back.transform(x[:300]), est.transform(x[:300]))
    assert back.model_.objectives is not None and back.model_.style_dim == 8
    assert back.inverse_transform(est.transform(x[:5])).shape[0] == 5


@pytest.mark.slow
def test_recipe_clusters_digits_better_than_reconstruction_alone(digits):
    """The objectives must earn their place: same seed, same epochs, on digits."""
    x, y = digits
    common = {"model": "gumbel", "epochs": 40, "random_state": 0, "device": "cpu"}
    recipe = DiscreteAutoencoder(**common).fit(x)
    plain = DiscreteAutoencoder(**common, objectives="none", lr=2e-3).fit(x)
    ours, theirs = nmi(y, recipe.predict(x)), nmi(y, plain.predict(x))
    assert ours > theirs + 0.05, (ours, theirs)
    assert ours > 0.74  # k-means on raw pixels scores 0.742


def test_cosine_schedule_falls_from_the_initial_rate_to_zero():
    from discretae.models.training import _set_cosine_lr, make_train_state, train

    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=0.4)
    seen = []
    for frac in (0.0, 0.5, 1.0):
        _set_cosine_lr(opt, frac)
        seen.append(opt.param_groups[0]["lr"])
    assert seen == pytest.approx([0.4, 0.2, 0.0])
    held = []
    for frac in (0.0, 0.5, 0.8, 0.9, 1.0):  # hold-cosine: flat for 80% of the run
        _set_cosine_lr(opt, frac, hold=0.8)
        held.append(opt.param_groups[0]["lr"])
    assert held == pytest.approx([0.4, 0.4, 0.4, 0.2, 0.0])
    state = make_train_state(build_autoencoder("gumbel", (1, 8, 8), n_codes=2))
    with pytest.raises(DiscretaeError, match="lr_schedule"):
        train(state, torch.rand(8, 1, 8, 8), epochs=1, batch_size=4, lr_schedule="step")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_augment_and_recipe_step_on_the_gpu():
    x = torch.rand(32, 1, 28, 28, device="cuda")
    y = augment(x, AugmentConfig(flip=0.5, erase=0.5))
    assert y.device == x.device and y.shape == x.shape
    model = build_autoencoder("gumbel", (1, 28, 28), objectives={"critic": 1.0}, style_dim=4)
    out = model.cuda()(x)
    (out["recon_loss"] + out["aux_loss"]).backward()
    assert torch.isfinite(out["aux_loss"])


def test_the_estimator_takes_a_learning_rate_curve(digits):
    x, _ = digits
    est = DiscreteAutoencoder("gumbel", epochs=1)
    recipe = est._build((1, 8, 8))
    assert est.lr_schedule_used(recipe) == "cosine"
    assert est.lr_schedule_used(DiscreteAutoencoder("vq")._build((1, 8, 8))) == "constant"
    est.set_params(lr_schedule="hold-cosine")
    assert est.lr_schedule_used(recipe) == "hold-cosine"
    with pytest.raises(DiscretaeError, match="lr_schedule='step'"):
        DiscreteAutoencoder("gumbel", epochs=1, lr_schedule="step").fit(x[:64])
