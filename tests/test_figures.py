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


# ---------------------------------------------------------------- content, not only size
TILE, PAD = 32, 2  # an 8x8 image is enlarged 4x to 32 px; tiles are 2 px apart


def tile_at(im: Image.Image, row: int, col: int, top: int = 0, left: int = 0) -> np.ndarray:
    """The (32, 32, 3) pixels of the montage tile at (row, col)."""
    y = top + PAD + row * (TILE + PAD)
    x = left + PAD + col * (TILE + PAD)
    return np.asarray(im.convert("RGB"))[y : y + TILE, x : x + TILE]


def test_montage_puts_each_image_in_its_tile(tmp_path):
    white, black = np.ones((8, 8)), np.zeros((8, 8))
    gray = np.full((8, 8), 0.5)
    red = np.zeros((3, 8, 8))
    red[0] = 1.0
    im = open_png(figures.montage(np.stack([black, white, gray]), tmp_path / "g.png", ncols=2))
    assert (tile_at(im, 0, 0) == 0).all()  # black, top left
    assert (tile_at(im, 0, 1) == 255).all()  # white, top right
    assert (tile_at(im, 1, 0) == 128).all()  # gray, second row
    assert (tile_at(im, 1, 1) == 255).all()  # no fourth image: background
    pixels = np.asarray(im)
    assert (pixels[:, :PAD] == 255).all() and (pixels[:PAD] == 255).all()  # white margin
    im = open_png(figures.montage(red[None], tmp_path / "r.png"))
    assert (tile_at(im, 0, 0) == [255, 0, 0]).all()


def test_cluster_montage_rows_hold_their_clusters(tmp_path):
    """Cluster 0's images are red, cluster 1's blue: each row shows only its own."""
    x = np.zeros((12, 3, 8, 8), np.float32)
    ids = np.array([1, 0] * 6)
    x[ids == 0, 0] = 1.0
    x[ids == 1, 2] = 1.0
    im = np.asarray(open_png(figures.cluster_montage(x, ids, tmp_path / "c.png")).convert("RGB"))
    title = 18  # px above the first row
    bands = [im[title + PAD + r * (TILE + PAD) :][:TILE] for r in range(2)]

    def count(band, color) -> int:
        return int((band == color).all(axis=-1).sum())

    tile = TILE * TILE
    assert count(bands[0], [255, 0, 0]) == 6 * tile and count(bands[0], [0, 0, 255]) == 0
    assert count(bands[1], [0, 0, 255]) == 6 * tile and count(bands[1], [255, 0, 0]) == 0


def test_reconstruction_grid_alternates_original_and_reconstruction(tmp_path):
    white, black = np.ones((4, 8, 8)), np.zeros((4, 8, 8))
    im = open_png(figures.reconstruction_grid(white, black, tmp_path / "r.png", per_row=4))
    a = np.asarray(im.convert("RGB"))
    right = a[:, -PAD - TILE : -PAD]  # the last column of tiles, right of the labels
    assert (right[PAD : PAD + TILE] == 255).all()  # originals
    assert (right[2 * PAD + TILE : 2 * PAD + 2 * TILE] == 0).all()  # reconstructions


def test_contingency_heatmap_shows_the_table(tmp_path):
    t = np.repeat(np.arange(4), 50)
    perfect = t.copy()
    mixed = np.random.default_rng(0).integers(0, 4, t.size)
    a = np.asarray(open_png(figures.contingency_heatmap(t, perfect, tmp_path / "a.png")))
    again = np.asarray(open_png(figures.contingency_heatmap(t, perfect, tmp_path / "b.png")))
    b = np.asarray(open_png(figures.contingency_heatmap(t, mixed, tmp_path / "c.png")))
    assert a.shape == b.shape and np.array_equal(a, again)  # deterministic
    assert not np.array_equal(a, b)

    # Blues: empty cells are near white, full ones dark; the perfect table has 12 of 16
    # cells empty, the mixed one none
    def pale(img) -> int:
        return int((img[..., :3].astype(int).min(axis=-1) > 240).sum())

    assert pale(a) > pale(b)


def test_usage_histogram_shows_the_counts(tmp_path):
    one = np.asarray(open_png(figures.usage_histogram([0, 0, 10, 0], tmp_path / "1.png")))
    flat = np.asarray(open_png(figures.usage_histogram([10] * 4, tmp_path / "4.png")))
    assert one.shape == flat.shape and not np.array_equal(one, flat)

    def bar_pixels(img) -> int:  # matplotlib's tab:blue, (31, 119, 180)
        return int((np.abs(img[..., :3].astype(int) - [31, 119, 180]).max(axis=-1) <= 2).sum())

    assert bar_pixels(one) > 0
    assert 3.5 < bar_pixels(flat) / bar_pixels(one) < 4.5  # four equal bars against one
