"""Figures and the report: valid PNG/JSON files, written atomically."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from discretae.core.errors import DiscretaeError
from discretae.evaluation import figures
from discretae.evaluation.report import REPORT_KEYS, write_report


def no_temp_files(folder) -> bool:
    return not [p for p in folder.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]


def open_png(path) -> Image.Image:
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()
        return im.copy()


@pytest.fixture
def digits_like():
    rng = np.random.default_rng(0)
    x = rng.random((60, 1, 8, 8)).astype(np.float32)
    ids = np.arange(60) % 6
    return x, ids


def test_cluster_montage(tmp_path, digits_like):
    x, ids = digits_like
    out = figures.cluster_montage(x, ids, tmp_path / "c.png", per_cluster=4)
    im = open_png(out)
    # 6 rows of 8x8 tiles enlarged 4x to 32 px, plus padding and a title
    assert im.height >= 6 * 32 and im.width >= 4 * 32
    assert np.asarray(im).std() > 10  # not a blank canvas
    few = open_png(figures.cluster_montage(x, ids, tmp_path / "m.png", max_clusters=2))
    assert few.height < im.height
    assert no_temp_files(tmp_path)


def test_montage_gray_and_color(tmp_path):
    gray = torch.rand(10, 28, 28)
    im = open_png(figures.montage(gray, tmp_path / "g.png"))
    assert im.width >= 4 * 56 and im.height >= 3 * 56  # 28 px enlarged 2x, 4x3 grid
    rgb = (np.random.default_rng(1).random((5, 3, 40, 40)) * 255).astype(np.uint8)
    im = open_png(figures.montage(rgb, tmp_path / "c.png", ncols=5))
    assert im.size == (5 * 42 + 2, 42 + 2)
    assert no_temp_files(tmp_path)


def test_reconstruction_grid(tmp_path, digits_like):
    x, _ = digits_like
    out = figures.reconstruction_grid(x, 1 - x, tmp_path / "r.png", n=16)
    im = open_png(out)
    assert im.height >= 4 * 32  # 2 groups of original + reconstruction rows
    with pytest.raises(DiscretaeError, match="shape"):
        figures.reconstruction_grid(x, x[:, :, :4], tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists() and no_temp_files(tmp_path)


def test_contingency_heatmap(tmp_path):
    rng = np.random.default_rng(0)
    t = rng.integers(0, 4, 200)
    p = (t + 1) % 5
    p[:20] = 4
    out = figures.contingency_heatmap(t, p, tmp_path / "h.png", label_names=list("abcd"))
    im = open_png(out)
    assert im.width > 200 and im.height > 150
    many = figures.contingency_heatmap(t, rng.integers(0, 80, 200), tmp_path / "h80.png")
    assert open_png(many).width > im.width
    assert no_temp_files(tmp_path)


def test_usage_histogram(tmp_path):
    small = open_png(figures.usage_histogram([5, 0, 3, 9], tmp_path / "u.png"))
    big = open_png(figures.usage_histogram(np.arange(2048), tmp_path / "b.png"))
    assert small.width > 200 and big.width > small.width
    with pytest.raises(DiscretaeError, match="non-negative"):
        figures.usage_histogram([-1, 2], tmp_path / "n.png")
    assert no_temp_files(tmp_path)


def test_bad_images_are_refused(tmp_path):
    with pytest.raises(DiscretaeError, match=r"shape \(4, 5\)"):
        figures.montage(np.zeros((4, 5)), tmp_path / "x.png")
    with pytest.raises(DiscretaeError, match="cluster_ids has 3"):
        figures.cluster_montage(np.zeros((4, 8, 8)), [0, 1, 2], tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []


def test_report_json(tmp_path):
    path = tmp_path / "report.json"
    written = write_report(
        path,
        {
            "data": {"source": tmp_path, "shape": (1, 8, 8), "n_images": np.int64(5)},
            "clustering": {"acc": np.float32(0.5), "counts": torch.tensor([1, 2])},
            "reconstruction": {"mse": 0.0, "psnr": math.inf},
        },
    )
    loaded = json.loads(path.read_text())
    assert loaded == written and sorted(loaded) == sorted(REPORT_KEYS)
    assert loaded["data"] == {"source": str(tmp_path), "shape": [1, 8, 8], "n_images": 5}
    assert loaded["clustering"] == {"acc": 0.5, "counts": [1, 2]}
    assert loaded["reconstruction"]["psnr"] is None and loaded["model"] is None
    assert loaded["figures"] == [] and loaded["created"] and loaded["discretae_version"]
    assert no_temp_files(tmp_path)
    with pytest.raises(DiscretaeError, match="unknown top-level keys"):
        write_report(tmp_path / "r2.json", {"extra": 1})
    with pytest.raises(DiscretaeError, match="not JSON"):
        write_report(tmp_path / "r3.json", {"data": {"x": object()}})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
