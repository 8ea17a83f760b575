"""How many stride-2 stages the conv networks take: a code grid finer than the image's
default feature map gets fewer stages (its own features), and model files written before
the setting was stored still read with the networks they were written with."""

import numpy as np
import pytest
import torch

from discretae import DiscreteAutoencoder
from discretae.core.errors import DiscretaeError
from discretae.core.serialization import read_model_file, write_model_file
from discretae.models.autoencoder import build_autoencoder, default_stages
from discretae.models.networks import default_downsampling


@pytest.mark.parametrize(
    "image_hw, grid, stages",
    [
        ((64, 64), None, 3),
        ((64, 64), (8, 8), 3),
        ((64, 64), (4, 4), 3),  # coarser grids pool the feature map: no extra stage
        ((64, 64), (16, 16), 2),
        ((64, 64), (9, 9), 2),
        ((64, 64), (32, 32), 1),
        ((64, 64), (64, 64), 1),  # at least one stage
        ((28, 28), (7, 7), 2),
        ((28, 28), (14, 14), 1),
        ((64, 32), (16, 8), 2),
        ((64, 32), (8, 16), 1),
    ],
)
def test_default_stages(image_hw, grid, stages):
    assert default_stages(image_hw, grid) == stages
    assert default_stages(image_hw, None) == default_downsampling(*image_hw)


def test_a_fine_grid_gets_its_own_feature_map():
    m = build_autoencoder("rvq", (3, 64, 64), latent="grid", grid=(16, 16), n_codes=16, width=8)
    assert m.config["stages"] == 2
    assert m.encoder.n_down == m.decoder.n_down == 2
    assert m.encoder.feat_hw == m.encoder.grid == (16, 16)
    assert m.encoder.pool is None  # no pooling, no repeated features
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        codes = m.encode(x)
        assert codes.shape[1:3] == (16, 16)
        assert m.decode(codes).shape == x.shape
    again = build_autoencoder(**m.config)
    assert {k: v.shape for k, v in again.state_dict().items()} == {
        k: v.shape for k, v in m.state_dict().items()
    }


def test_stages_given_and_refused():
    m = build_autoencoder("vq", (1, 28, 28), latent="grid", grid=(7, 7), stages=1, width=8)
    assert m.encoder.n_down == 1 and m.encoder.feat_hw == (14, 14)
    for bad in (0, 7, 2.5):
        with pytest.raises(DiscretaeError, match="stages"):
            build_autoencoder("vq", (1, 28, 28), latent="grid", stages=bad)
    assert build_autoencoder("vq", (64,)).config["stages"] is None  # flat vectors: MLPs


def test_model_files_from_before_the_setting_keep_their_networks(tmp_path):
    rng = np.random.default_rng(0)
    x = (rng.random((48, 28, 28)) * 255).astype(np.uint8)
    est = DiscreteAutoencoder(
        model="vq", latent="grid", grid=(14, 14), n_codes=8, epochs=1, width=8, random_state=0
    ).fit(x)
    assert est.model_.encoder.n_down == 1
    path = tmp_path / "model.safetensors"
    est.save(path)
    # what a file written before: the networks of default_downsampling (2 stages, the
    # 7x7 map repeated up to 14x14), no "stages" in its config
    tensors, config = read_model_file(path)
    old_config = {k: v for k, v in config["model"].items() if k != "stages"}
    old = build_autoencoder(**old_config, stages=2)
    tensors = {k: v for k, v in tensors.items() if not k.startswith("model.")}
    tensors.update({f"model.{k}": v for k, v in old.state_dict().items()})
    old_path = tmp_path / "old.safetensors"
    write_model_file(old_path, tensors, {**config, "model": old_config})
    loaded = DiscreteAutoencoder.load(old_path, device="cpu")
    assert loaded.model_.encoder.n_down == 2
    assert loaded.transform(x[:4]).shape == est.transform(x[:4]).shape
    # and the new file reads back as written
    assert DiscreteAutoencoder.load(path, device="cpu").model_.encoder.n_down == 1


@pytest.mark.parametrize(
    "kind, shape, grid",
    [
        ("rvq", (3, 64, 64), (16, 16)),  # a compressor: the image over 4
        ("vq", (3, 64, 64), (8, 8)),  # the others: the image size's stages
        ("rvq", (1, 28, 28), (7, 7)),
        ("rvq", (3, 32, 32), (8, 8)),
        ("rvq", (1, 8, 8), (4, 4)),
        ("rvq", (3, 128, 96), (32, 24)),
        ("rvq", (3, 32, 23), (16, 12)),  # the image size's single stage: fewer than 2
    ],
)
def test_default_grid_by_kind(kind, shape, grid):
    m = build_autoencoder(kind, shape, latent="grid", n_codes=8, width=8)
    assert tuple(m.config["grid"]) == grid
    assert m.encoder.feat_hw == grid  # its own feature map, not a pooled or repeated one
