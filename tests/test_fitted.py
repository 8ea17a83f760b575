"""FittedModel: a model file's inference without scikit-learn, equal to the estimator's."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from discretae.commands import load_model
from discretae.core.errors import DiscretaeError, NotFittedError
from discretae.estimator.discrete_autoencoder import DiscreteAutoencoder
from discretae.estimator.fitted import FittedModel, resolve_device


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    x = (load_digits().images / 16).astype(np.float32)[:400]
    path = tmp_path_factory.mktemp("fitted") / "m.safetensors"
    for model, extra in (("vq", {}), ("binary", {"n_clusters": 5})):
        est = DiscreteAutoencoder(model, n_codes=8, n_bits=6, epochs=1, random_state=0, **extra)
        est.fit(x)
        est.save(path.with_name(f"{model}.safetensors"))
    return x, path.parent


@pytest.mark.parametrize("kind", ["vq", "binary"])
def test_same_codes_clusters_and_images_as_the_estimator(digits_model, kind):
    x, folder = digits_model
    est = DiscreteAutoencoder.load(folder / f"{kind}.safetensors", device="cpu")
    light = FittedModel.load(folder / f"{kind}.safetensors", device="cpu")
    codes = est.transform(x)
    np.testing.assert_array_equal(light.transform(x), codes)
    np.testing.assert_array_equal(light.predict(x), est.predict(x))
    np.testing.assert_array_equal(light.cluster_ids(codes), est.cluster_ids(codes))
    np.testing.assert_allclose(light.inverse_transform(codes), est.inverse_transform(codes))
    params = est.get_params(deep=False)
    del params["callback"]  # not stored in the file
    assert light.get_params() == params
    assert light.model == kind and light.code_shape_ == est.code_shape_


def test_checks_inputs_like_the_estimator(digits_model):
    _, folder = digits_model
    light = FittedModel.load(folder / "vq.safetensors", device="cpu")
    with pytest.raises(DiscretaeError, match="per-sample shape"):
        light.transform(np.zeros((2, 7, 7), np.float32))
    with pytest.raises(DiscretaeError, match="codes must lie in"):
        light.inverse_transform(np.array([99]))
    with pytest.raises(NotFittedError):
        FittedModel({}).transform(np.zeros((1, 8, 8), np.float32))


def test_devices_are_checked_by_the_one_device_check():
    assert resolve_device("cpu") == resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    for bad in ("tpu9", "cpu:0", 3):
        with pytest.raises(DiscretaeError, match="is not one of auto, cpu, cuda, cuda:N"):
            resolve_device(bad)


def test_a_file_without_parameters_is_refused(tmp_path):
    from discretae.core.serialization import write_model_file

    path = tmp_path / "odd.safetensors"
    write_model_file(path, {}, {"model": {}})
    with pytest.raises(DiscretaeError, match="inconsistent model"):
        FittedModel.load(path)


def test_loading_for_inference_does_not_import_scikit_learn(digits_model):
    _, folder = digits_model
    code = (
        "import sys\n"
        "from discretae.commands import load_model\n"
        f"m = load_model({str(folder / 'vq.safetensors')!r}, 'cpu', inference_only=True)\n"
        "m.encode_batch(__import__('torch').zeros(1, 1, 8, 8))\n"
        "print(sorted(k for k in sys.modules if k.split('.')[0] in ('sklearn', 'scipy')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    full = load_model(folder / "vq.safetensors", "cpu")
    assert isinstance(full, DiscreteAutoencoder)
