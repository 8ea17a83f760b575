"""KMeans on the nearest-code kernel, compared with scikit-learn's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans as SkKMeans
from sklearn.datasets import load_digits, make_blobs

from discretae.core.errors import DiscretaeError, NotFittedError
from discretae.quantizers.kmeans import KMeans, _lloyd


@pytest.mark.parametrize(
    "name, k",
    [("digits", 10), ("blobs", 12), ("blobs-overlapping", 7)],
)
def test_inertia_close_to_sklearn(name, k):
    if name == "digits":
        X = load_digits().data
    elif name == "blobs":
        X = make_blobs(2000, 16, centers=12, random_state=0)[0]
    else:
        X = make_blobs(1500, 5, centers=7, cluster_std=3.0, random_state=1)[0]
    ours = KMeans(k, n_init=3, random_state=0).fit(X)
    ref = SkKMeans(k, n_init=3, random_state=0).fit(X)
    assert ours.inertia_ <= 1.03 * ref.inertia_
    # inertia_ is the inertia of the returned labels and centers
    d = ((X - ours.cluster_centers_[ours.labels_]) ** 2).sum()
    assert ours.inertia_ == pytest.approx(d, rel=1e-4)


def test_numpy_in_numpy_out_and_predict_matches_labels():
    X = make_blobs(300, 4, centers=3, random_state=2)[0].astype(np.float32)
    km = KMeans(3, random_state=0).fit(X)
    assert isinstance(km.cluster_centers_, np.ndarray) and km.cluster_centers_.shape == (3, 4)
    assert isinstance(km.labels_, np.ndarray) and km.labels_.dtype == np.int64
    assert np.array_equal(km.predict(X), km.labels_)
    assert np.array_equal(KMeans(3, random_state=0).fit_predict(X), km.labels_)


def test_tensor_in_tensor_out():
    X = torch.from_numpy(make_blobs(300, 4, centers=3, random_state=3)[0]).float()
    km = KMeans(3, random_state=0).fit(X)
    assert isinstance(km.cluster_centers_, torch.Tensor)
    assert isinstance(km.labels_, torch.Tensor) and km.labels_.dtype == torch.int64
    assert torch.equal(km.predict(X), km.labels_)


def test_deterministic_for_a_seed():
    X = load_digits().data[:500]
    a = KMeans(8, random_state=5).fit(X)
    b = KMeans(8, random_state=5).fit(X)
    assert np.array_equal(a.cluster_centers_, b.cluster_centers_)
    assert np.array_equal(a.labels_, b.labels_)


def test_duplicate_points_fill_every_cluster():
    X = np.repeat(np.arange(5, dtype=np.float32)[:, None] * 10, 40, axis=0)
    km = KMeans(5, random_state=0).fit(X)
    assert sorted(np.bincount(km.labels_).tolist()) == [40] * 5
    assert km.inertia_ == pytest.approx(0.0, abs=1e-6)


def test_empty_cluster_is_relocated():
    x = torch.tensor([[0.0], [0.1], [5.0], [5.1]])
    centers = torch.tensor([[0.0], [5.0], [1000.0]])  # the third center gets no point
    new, _ = _lloyd(x, centers, max_iter=1, tol=0.0)
    assert float(new[2, 0]) < 10.0
    assert torch.unique(torch.cdist(x, new).argmin(1)).numel() == 3


def test_bad_input_raises():
    with pytest.raises(DiscretaeError, match="n_samples=5 should be >= n_clusters=10"):
        KMeans(10).fit(np.random.rand(5, 3))
    with pytest.raises(DiscretaeError, match="NaN"):
        KMeans(2).fit(np.array([[0.0, 1.0], [np.nan, 1.0], [2.0, 2.0]]))
    with pytest.raises(DiscretaeError, match="2-D"):
        KMeans(2).fit(np.random.rand(5, 3, 2))
    with pytest.raises(DiscretaeError, match="n_clusters"):
        KMeans(0).fit(np.random.rand(5, 3))
    with pytest.raises(NotFittedError, match="not fitted"):
        KMeans(2).predict(np.random.rand(5, 3))
    km = KMeans(2).fit(np.random.rand(6, 3))
    with pytest.raises(DiscretaeError, match="4 features"):
        km.predict(np.random.rand(5, 4))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_the_input_device():
    X = torch.from_numpy(load_digits().data).float().cuda()
    km = KMeans(10, random_state=0).fit(X)
    assert km.cluster_centers_.is_cuda and km.labels_.is_cuda
    ref = SkKMeans(10, n_init=3, random_state=0).fit(X.cpu().numpy())
    assert km.inertia_ <= 1.03 * ref.inertia_
