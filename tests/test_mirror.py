"""The mirror rule (:mod:`discretae.models.mirror`): flips join the view augmentations
when a collection holds mirror images, chosen from the data alone."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from discretae import DiscreteAutoencoder
from discretae.data.datasets import load_dataset
from discretae.models.mirror import RATIO_MAX, mirror_flip, mirror_ratio, with_mirror_rule


def shapes(n: int, seed: int = 0) -> torch.Tensor:
    """n smooth random 16x16 images in [0, 1]: no two alike, none symmetric."""
    g = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.rand(n, 1, 4, 4, generator=g), size=(16, 16), mode="bilinear")
    return (x - x.amin((2, 3), keepdim=True)) / (x.amax((2, 3), keepdim=True) + 1e-6)


def with_mirrors(n: int) -> torch.Tensor:
    """A collection holding each image and a slightly noisy mirror image of it."""
    x = shapes(n)
    noise = 0.02 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    return torch.cat([x, (x.flip(-1) + noise).clamp(0, 1)])


def test_mirror_images_in_the_data_turn_flips_on():
    got = mirror_flip(with_mirrors(300))
    assert got["ratio"] < 0.5 and got["flip"] == 0.5


def test_images_without_their_mirrors_keep_flips_off():
    got = mirror_flip(shapes(600))
    assert got["ratio"] > RATIO_MAX and got["flip"] == 0.0


def test_digits_keep_flips_off():
    x = torch.as_tensor(load_dataset("digits").to_array())
    got = mirror_flip(x)
    assert got["ratio"] > RATIO_MAX and got["flip"] == 0.0


def test_the_ratio_leaves_the_callers_random_state_alone():
    torch.manual_seed(5)
    before = torch.get_rng_state()
    first = mirror_ratio(with_mirrors(100))
    assert torch.equal(torch.get_rng_state(), before)
    assert mirror_ratio(with_mirrors(100)) == first  # its own seeded sample


@pytest.mark.parametrize("x", [torch.zeros(1, 1, 8, 8), torch.zeros(5, 1, 1, 8), torch.zeros(4, 9)])
def test_too_little_to_measure_gives_no_ratio_and_no_flips(x):
    assert mirror_ratio(x) is None and mirror_flip(x)["flip"] == 0.0


def test_a_given_flip_wins_and_no_view_objectives_need_no_rule():
    x = with_mirrors(50)
    settings = {"mi": 1.0, "augment": {"flip": 0.0, "erase": 0.25}}
    assert with_mirror_rule(settings, x) == (settings, None)
    assert with_mirror_rule({}, x) == ({}, None)
    got, record = with_mirror_rule({"mi": 1.0, "augment": {"erase": 0.25}}, x)
    assert got["augment"] == {"erase": 0.25, "flip": 0.5} and record["flip"] == 0.5


def recipe(**kw) -> DiscreteAutoencoder:
    return DiscreteAutoencoder("gumbel", n_codes=4, epochs=1, random_state=0, **kw)


def test_the_recipe_trains_with_the_flips_the_data_chose_and_keeps_the_record(tmp_path):
    x = with_mirrors(150).numpy()
    est = recipe().fit(x)
    assert est.mirror_["flip"] == 0.5 and est.mirror_["ratio"] < RATIO_MAX
    assert est.model_.config["objectives"]["augment"]["flip"] == 0.5
    assert est.model_.augment.flip == 0.5
    est.save(tmp_path / "m.safetensors")
    back = DiscreteAutoencoder.load(tmp_path / "m.safetensors", device="cpu")
    assert back.mirror_ == est.mirror_ and back.model_.augment.flip == 0.5

    given = recipe(objective_options={"augment": {"flip": 0.0}}).fit(x)
    assert given.mirror_ is None and given.model_.augment.flip == 0.0
    plain = recipe(objectives="none").fit(x)
    assert plain.mirror_ is None and plain.model_.augment is None


def test_cli_fit_names_the_flips_it_chose(tmp_path):
    data = tmp_path / "x.npy"
    np.save(data, np.rint(with_mirrors(100).numpy() * 255).astype(np.uint8))
    out = tmp_path / "m.safetensors"
    cmd = [sys.executable, "-m", "discretae.cli", "fit", str(data), "--epochs", "1",
           "--codes", "4", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "flips" in proc.stdout and "on, p 0.5" in proc.stdout
    proc = subprocess.run([*cmd, "--json", "--quiet", "--augment", "flip=0"],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["mirror"] is None and summary["augment"] == {"flip": 0.0}
