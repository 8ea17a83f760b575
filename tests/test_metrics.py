"""Metrics on small cases checked by hand, and against scikit-learn where it has them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from discretae.core.errors import DiscretaeError
from discretae.evaluation.metrics import (
    acc,
    ari,
    clustering_scores,
    code_usage,
    contingency,
    empirical_entropy_bits_per_image,
    mse,
    nmi,
    psnr,
    psnr_from_mse,
    purity,
    raw_bits_per_image,
)


def test_purity_by_hand():
    # cluster 0: classes [0, 0, 1] -> 2; cluster 1: [1, 1, 2] -> 2; cluster 2: [2] -> 1
    t = [0, 0, 1, 1, 1, 2, 2]
    p = [0, 0, 0, 1, 1, 1, 2]
    assert purity(t, p) == pytest.approx(5 / 7)
    assert purity(t, [0] * 7) == pytest.approx(3 / 7)  # one cluster: the largest class


def test_acc_permuted_labels_is_one():
    t = np.array([0, 0, 1, 1, 2, 2, 2])
    p = np.array([5, 5, 9, 9, 7, 7, 7])  # a relabeling, with ids that are not 0..K-1
    assert acc(t, p) == 1.0 and purity(t, p) == 1.0
    assert nmi(t, p) == pytest.approx(1.0) and ari(t, p) == pytest.approx(1.0)


def test_acc_with_more_or_fewer_clusters_than_classes():
    t = [0, 0, 0, 0, 1, 1]
    over = [0, 0, 1, 1, 2, 2]  # class 0 split in two: one half is matched
    assert acc(t, over) == pytest.approx(4 / 6)
    assert purity(t, over) == 1.0  # purity rewards splitting; ACC does not
    under = [0, 0, 0, 0, 0, 0]
    assert acc(t, under) == pytest.approx(4 / 6)
    # class 0 is the majority of both clusters: purity counts it twice, ACC once
    t2 = [0, 0, 0, 0, 1, 0, 0, 0, 1, 1]
    p2 = [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]
    assert purity(t2, p2) == pytest.approx(7 / 10)
    assert acc(t2, p2) == pytest.approx(6 / 10)


def test_nmi_ari_match_sklearn():
    rng = np.random.default_rng(0)
    t = rng.integers(0, 4, 300)
    p = np.where(rng.random(300) < 0.7, t, rng.integers(0, 6, 300))
    assert nmi(t, p) == pytest.approx(normalized_mutual_info_score(t, p))
    assert ari(t, p) == pytest.approx(adjusted_rand_score(t, p))
    assert nmi(torch.from_numpy(t), torch.from_numpy(p)) == pytest.approx(nmi(t, p))


def test_clustering_scores_skip_unlabeled():
    t = [0, 0, 1, 1, -1, -1]
    p = [3, 3, 4, 4, 3, 8]
    s = clustering_scores(t, p)
    assert s["acc"] == 1.0 and s["purity"] == 1.0 and s["nmi"] == pytest.approx(1.0)
    assert s["n_scored"] == 4 and s["n_clusters_used"] == 3 and s["n_classes"] == 2
    with pytest.raises(DiscretaeError, match="no image has a label"):
        clustering_scores([-1, -1], [0, 1])


def test_length_mismatch_names_both_lengths():
    with pytest.raises(DiscretaeError, match="labels_true has 3 entries but labels_pred has 2"):
        purity([0, 1, 2], [0, 1])
    with pytest.raises(DiscretaeError, match="dtype"):
        acc(["a", "b"], [0, 1])


def test_contingency_counts():
    table, classes, clusters = contingency([1, 1, 2], [7, 8, 8])
    assert table.tolist() == [[1, 1], [0, 1]]
    assert classes.tolist() == [1, 2] and clusters.tolist() == [7, 8]


def test_code_usage_uniform_and_skewed():
    u = code_usage(np.tile(np.arange(8), 5).reshape(10, 4), 8)
    assert u["perplexity"] == pytest.approx(8.0) and u["used"] == 8
    assert u["counts"] == [5] * 8 and u["usage_fraction"] == 1.0
    s = code_usage(torch.tensor([0, 0, 0, 1]), 4)
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert s["perplexity"] == pytest.approx(math.exp(h)) and s["usage_fraction"] == 0.5
    with pytest.raises(DiscretaeError, match="expected 0..3"):
        code_usage([0, 4], 4)


def test_code_usage_binary():
    codes = np.array([[0, 1, 1], [0, 1, 1], [1, 0, 1], [1, 1, 1]])
    b = code_usage(codes, binary=True)
    assert b["n_bits"] == 3 and b["distinct_patterns"] == 3
    assert b["bit_means"] == pytest.approx([0.5, 0.75, 1.0])
    h = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert b["perplexity"] == pytest.approx(math.exp(h)) and b["usage_fraction"] == 3 / 8
    with pytest.raises(DiscretaeError, match="0/1"):
        code_usage([[0, 2]], binary=True)


def test_mse_psnr():
    x = np.zeros((2, 1, 4, 4), np.float32)
    y = x + 0.1
    assert mse(x, y) == pytest.approx(0.01)
    assert psnr(x, y) == pytest.approx(20.0)  # 10 log10(1 / 0.01)
    assert psnr(x, y * 2, data_range=2.0) == pytest.approx(10 * math.log10(4 / 0.04))
    assert psnr_from_mse(0.0) == math.inf
    with pytest.raises(DiscretaeError, match=r"shape \(2, 1, 4, 4\) but x_hat has \(2, 16\)"):
        mse(x, y.reshape(2, 16))


def test_bits():
    assert raw_bits_per_image((7, 7), 512) == 49 * 9
    assert raw_bits_per_image((), 10) == 4
    assert raw_bits_per_image((32,), 2) == 32
    assert raw_bits_per_image((), 1) == 0
    # position 0 uniform over 4 values (2 bits), position 1 constant (0 bits)
    codes = np.stack([np.arange(8) % 4, np.zeros(8, int)], axis=1)
    assert empirical_entropy_bits_per_image(codes) == pytest.approx(2.0)
    assert empirical_entropy_bits_per_image(np.arange(8)) == pytest.approx(3.0)
