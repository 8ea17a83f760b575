"""Model files: identical codes after a round trip; foreign, truncated, newer files fail clearly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from discretae.core.errors import DiscretaeError
from discretae.core.serialization import FORMAT_VERSION, read_model_file, write_model_file
from discretae.estimator.discrete_autoencoder import DiscreteAutoencoder


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return rng.random((48, 10, 9)).astype(np.float32)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("models") / "vq.safetensors"
    est = DiscreteAutoencoder(model="vq", n_codes=5, epochs=1, batch_size=16).fit(data)
    est.save(path)
    return path, est


@pytest.mark.parametrize(
    "params",
    [
        dict(model="vq", n_codes=5),
        dict(model="gumbel", quantizer_options={"groups": 2}, n_clusters=4),
        dict(model="binary", n_bits=6, n_clusters=4),
        dict(model="vq", latent="grid", n_codes=7, n_clusters=3),
    ],
)
def test_round_trip_gives_identical_codes(tmp_path, data, params):
    est = DiscreteAutoencoder(epochs=1, batch_size=16, **params).fit(data)
    path = tmp_path / "m.safetensors"
    est.save(path)
    loaded = DiscreteAutoencoder.load(path, device="cpu")
    codes = est.transform(data)
    assert np.array_equal(loaded.transform(data), codes)
    assert np.array_equal(loaded.predict(data), est.predict(data))
    assert np.array_equal(loaded.inverse_transform(codes), est.inverse_transform(codes))
    assert loaded.get_params() == {**est.get_params(), "device": "cpu"}
    assert loaded.input_shape_ == est.input_shape_ and loaded.code_shape_ == est.code_shape_
    assert loaded.n_clusters_ == est.n_clusters_
    assert loaded.history_ == est.history_
    if est.kmeans_ is not None:
        np.testing.assert_array_equal(loaded.cluster_centers_, est.cluster_centers_)
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temp file left


def test_file_layout(model_file):
    path, est = model_file
    tensors, config = read_model_file(path)
    assert config["params"]["model"] == "vq" and config["input_shape"] == [1, 10, 9]
    assert "callback" not in config["params"]
    assert torch.equal(tensors["model.quantizer.codebook"], est.model_.quantizer.codebook.cpu())


def test_save_replaces_atomically(tmp_path, model_file):
    _, est = model_file
    path = tmp_path / "m.safetensors"
    path.write_bytes(b"old")
    est.save(path)
    assert DiscreteAutoencoder.load(path).n_clusters_ == 5
    with pytest.raises(DiscretaeError, match="directory"):
        est.save(tmp_path)


def test_missing_file(tmp_path):
    with pytest.raises(DiscretaeError, match="does not exist"):
        DiscreteAutoencoder.load(tmp_path / "nope.safetensors")


def test_not_safetensors(tmp_path):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(b"this is not a model at all, just some bytes" * 10)
    with pytest.raises(DiscretaeError, match="not a readable discretae model"):
        DiscreteAutoencoder.load(path)


def test_pickle_is_rejected(tmp_path):
    path = tmp_path / "pickled.safetensors"
    torch.save({"w": torch.zeros(3)}, path)
    with pytest.raises(DiscretaeError, match="not a readable discretae model"):
        DiscreteAutoencoder.load(path)


def test_foreign_safetensors(tmp_path):
    path = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(3)}, str(path), metadata={"format": "pt"})
    with pytest.raises(DiscretaeError, match="not a discretae model"):
        DiscreteAutoencoder.load(path)
    save_file({"w": torch.zeros(3)}, str(path))  # no metadata at all
    with pytest.raises(DiscretaeError, match="not a discretae model"):
        DiscreteAutoencoder.load(path)


@pytest.mark.parametrize("keep", [0.5, 0.99, 20])
def test_truncated(tmp_path, model_file, keep):
    src, _ = model_file
    blob = src.read_bytes()
    n = int(len(blob) * keep) if keep < 1 else keep
    path = tmp_path / "cut.safetensors"
    path.write_bytes(blob[:n])
    with pytest.raises(DiscretaeError, match="truncated"):
        DiscreteAutoencoder.load(path)


def _rewrite(src, dst, edit):
    """Copy a model file with its metadata changed by ``edit(metadata)``."""
    with safe_open(str(src), framework="pt") as sf:
        metadata = dict(sf.metadata())
    edit(metadata)
    save_file(load_file(str(src)), str(dst), metadata=metadata)


def test_newer_format_version(tmp_path, model_file):
    src, _ = model_file
    path = tmp_path / "future.safetensors"
    _rewrite(src, path, lambda m: m.update(format_version=str(FORMAT_VERSION + 1)))
    with pytest.raises(DiscretaeError, match="newer discretae"):
        DiscreteAutoencoder.load(path)


def test_corrupt_config(tmp_path, model_file):
    src, _ = model_file
    path = tmp_path / "bad.safetensors"
    _rewrite(src, path, lambda m: m.update(config="{not json"))
    with pytest.raises(DiscretaeError, match="corrupt config"):
        DiscreteAutoencoder.load(path)

    def drop_codebook_size(m):
        config = json.loads(m["config"])
        config["model"]["n_codes"] = 6  # no longer matches the stored codebook
        m["config"] = json.dumps(config)

    _rewrite(src, path, drop_codebook_size)
    with pytest.raises(DiscretaeError, match="inconsistent"):
        DiscreteAutoencoder.load(path)


def test_write_read_round_trip(tmp_path):
    path = tmp_path / "t.safetensors"
    write_model_file(path, {"a": torch.arange(4.0), "b": torch.ones(2, 2)}, {"x": [1, 2]})
    tensors, config = read_model_file(path)
    assert config == {"x": [1, 2]}
    assert torch.equal(tensors["a"], torch.arange(4.0))
