"""A grid (compression) model's default schedule: 30 epochs, or more on small data, up to
the recipe's steps and cost cap; and only grid models get the refinement table."""

import numpy as np
from PIL import Image

from discretae import DiscreteAutoencoder
from discretae.commands.fit import fit
from discretae.compression.codec import load_refinement
from discretae.estimator.recipe import DEFAULT_EPOCHS, RECIPE_MAX_EPOCHS, grid_epochs


def test_grid_epochs():
    assert grid_epochs(1, 256, 64 * 45) == 162  # 244 images at 64x45: one step an epoch
    assert grid_epochs(235, 256, 28 * 28) == DEFAULT_EPOCHS  # Fashion-MNIST keeps 30
    assert grid_epochs(23, 256, 64 * 64) == DEFAULT_EPOCHS  # 5,887 images at 64x64
    assert grid_epochs(1, 256, 8 * 8) == RECIPE_MAX_EPOCHS  # tiny images: the cap
    assert grid_epochs(10, 32, 8 * 8) == 200  # 2000 steps


def test_small_data_trains_a_grid_model_longer_than_a_global_one():
    x = (np.random.default_rng(0).random((40, 16, 16)) * 255).astype(np.uint8)
    common = dict(model="vq", n_codes=4, width=4, batch_size=64, device="cpu")
    grid = DiscreteAutoencoder(latent="grid", **common).fit(x)
    steps = min(2000, 120_000_000 // (64 * 16 * 16))
    assert len(grid.history_) == min(RECIPE_MAX_EPOCHS, steps) == 300
    flat = DiscreteAutoencoder(latent="global", **common).fit(x)
    assert len(flat.history_) == DEFAULT_EPOCHS
    given = DiscreteAutoencoder(latent="grid", epochs=2, **common).fit(x)
    assert len(given.history_) == 2


def test_only_grid_models_get_the_refinement_table(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(12):
        Image.fromarray((rng.random((16, 16)) * 255).astype(np.uint8)).save(folder / f"{i}.png")
    for latent, has_table in (("grid", True), ("global", False)):
        out = tmp_path / f"{latent}.safetensors"
        fit(str(folder), out=out, model="vq", codes=4, latent=latent, epochs=1, device="cpu",
            prior="context")  # fmt: skip
        assert (load_refinement(out) is not None) == has_table
