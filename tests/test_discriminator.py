"""The label-free code-quality score: random codes near chance, informative codes well above."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits

from discretae.core.errors import DiscretaeError
from discretae.evaluation.discriminator import discriminator_score


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    return d.images[:, None].astype(np.float32) / 16, d.target


def test_random_codes_score_near_chance(digits):
    x, _ = digits
    codes = np.random.default_rng(0).integers(0, 10, len(x))
    r = discriminator_score(x, codes, 10)
    assert 0.4 < r["auc"] < 0.6 and 0.4 < r["accuracy"] < 0.6
    assert r["n_train"] + r["n_test"] == len(x)


def test_codes_that_name_the_digit_score_well_above_chance(digits):
    x, y = digits
    r = discriminator_score(x, y, 10)
    assert r["auc"] > 0.85 and r["accuracy"] > 0.8


def test_flat_inputs_and_multi_position_codes(digits):
    x, y = digits
    # a two-position code: the digit and its parity; bits are codes with 2 values
    codes = np.stack([y, y % 2], 1)
    assert discriminator_score(x.reshape(len(x), -1), codes, 10)["auc"] > 0.8
    bits = np.stack([(y >> b) & 1 for b in range(4)], 1)
    assert discriminator_score(x, bits, 2)["auc"] > 0.75


def test_score_is_repeatable(digits):
    x, y = digits
    a = discriminator_score(x[:300], y[:300], 10, epochs=2, seed=4)
    b = discriminator_score(x[:300], y[:300], 10, epochs=2, seed=4)
    assert a == b


@pytest.mark.parametrize(
    "codes, n_values, match",
    [
        (np.zeros(5, dtype=int), 10, "images but"),
        (np.full(20, 10), 10, r"in \[0, 10\)"),
        (np.full(20, -1), 10, r"in \[0, 10\)"),
    ],
)
def test_bad_codes_are_refused(codes, n_values, match):
    with pytest.raises(DiscretaeError, match=match):
        discriminator_score(np.zeros((20, 1, 8, 8)), codes, n_values)


def test_too_few_images_are_refused():
    with pytest.raises(DiscretaeError, match="at least 10"):
        discriminator_score(np.zeros((5, 1, 8, 8)), np.zeros(5, dtype=int), 2)
