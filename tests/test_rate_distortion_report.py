"""benchmarks/rate_distortion.py's pure parts: the CompressAI-style JSON, MS-SSIM, the
openclipart split and loader, and Pillow's colour round trip. No model is fitted."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"


def point(bytes_per_image, psnr, ms=None, enc=2.0, dec=1.0, **extra):
    return {"bytes_per_image": bytes_per_image, "psnr": psnr, "ms_ssim": ms,
            "encode_s": enc, "decode_s": dec, **extra}  # fmt: skip


# ----------------------------------------------------------------------- CompressAI JSON
def test_compressai_report_gray_layout_units_and_order(rd):
    rows = [point(98.0, 30.0, enc=4.0, dec=2.0, label="b"), point(49.0, 25.0, label="a")]
    out = rd.compressai_report("x", "made up", rows, image_shape=(1, 28, 28), n_images=4)
    assert set(out) == {"name", "description", "results", "operating_points", "ms-ssim-note"}
    assert out["name"] == "x" and out["description"] == "made up"
    res = out["results"]
    assert set(res) == {"bpp", "psnr", "ms-ssim", "encoding_time", "decoding_time"}
    # in order of bpp; bpp = 8 * bytes / (28 * 28); times per image
    assert out["operating_points"] == ["a", "b"]
    assert res["bpp"] == pytest.approx([8 * 49 / 784, 8 * 98 / 784])
    assert res["psnr"] == [25.0, 30.0]
    assert res["ms-ssim"] == [None, None]
    assert res["encoding_time"] == pytest.approx([0.5, 1.0])
    assert res["decoding_time"] == pytest.approx([0.25, 0.5])
    assert "28x28" in out["ms-ssim-note"] and "161" in out["ms-ssim-note"]
    json.dumps(out, allow_nan=False)  # plain JSON


def test_compressai_report_colour_uses_psnr_rgb_and_no_note_when_large(rd):
    rows = [point(1000.0, 31.0, ms=0.97, label="q50")]
    out = rd.compressai_report("y", "d", rows, image_shape=(3, 200, 250), n_images=10)
    assert "psnr-rgb" in out["results"] and "psnr" not in out["results"]
    assert out["results"]["ms-ssim"] == [0.97]
    assert out["results"]["bpp"] == pytest.approx([8000 / 50000])
    assert "ms-ssim-note" not in out


def made_up_result(avif):
    return {
        "n_test": 8,
        "image_shape": [3, 64, 64],
        "models": [
            {"name": "rvq-a", "params": {"model": "rvq"}},
            {"name": "vq-b", "params": {"model": "vq"}},
        ],  # fmt: skip
        "points": [
            {"model": "rvq-a", "levels": 1, **point(40.0, 24.0)},
            {"model": "rvq-a", "levels": 2, **point(80.0, 28.0)},
            {"model": "vq-b", "levels": 1, **point(90.0, 27.0)},  # beaten by rvq-a L2
        ],
        "baselines": {
            "png": [{"quality": None, **point(3000.0, None)}],
            "jpeg": [{"quality": q, **point(b, p)} for q, b, p in ((10, 700, 24), (50, 900, 30))],
            "webp": [{"quality": q, **point(b, p)} for q, b, p in ((10, 300, 26), (50, 600, 32))],
            "avif": [{"quality": 50, **point(500, 31)}] if avif else {"skipped": "no AVIF"},
        },
    }


@pytest.mark.parametrize("avif", [True, False])
def test_write_compressai_files_per_codec(rd, tmp_path, avif):
    paths = rd.write_compressai(tmp_path, "set", made_up_result(avif))
    want = {"discretae", "webp", "jpeg"} | ({"avif"} if avif else set())
    assert {p.name for p in paths} == {f"rd-set-{c}.json" for c in want}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)
    ours = json.loads((tmp_path / "rd-set-discretae.json").read_text())
    # the points not beaten on both bytes and PSNR; rvq labels carry their level
    assert ours["operating_points"] == ["rvq-a L1", "rvq-a L2"]
    assert ours["results"]["psnr-rgb"] == [24.0, 28.0]
    assert ours["results"]["bpp"] == pytest.approx([8 * 40 / 4096, 8 * 80 / 4096])
    assert ours["results"]["encoding_time"] == pytest.approx([0.25, 0.25])
    assert ours["ms-ssim-note"].endswith("64x64")
    webp = json.loads((tmp_path / "rd-set-webp.json").read_text())
    assert webp["operating_points"] == ["q10", "q50"]
    assert webp["results"]["psnr-rgb"] == [26, 32]


# ----------------------------------------------------------------------- MS-SSIM
def images(n, c, h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, c, h, w), dtype=np.uint8)


def noisy(a, sigma, seed=1):
    noise = np.random.default_rng(seed).normal(0, sigma, a.shape)
    return np.clip(np.rint(a + noise), 0, 255).astype(np.uint8)


def smooth(n, h, w):
    """Smooth gradients with some texture: images whose MS-SSIM falls gently with noise."""
    yy, xx = np.mgrid[0:h, 0:w]
    base = 128 + 60 * np.sin(xx / 9.0) * np.cos(yy / 13.0)
    return np.stack([np.rint(base + 10 * i).clip(0, 255) for i in range(n)])[:, None].astype(
        np.uint8
    )


def test_ms_ssim_identical_is_one_and_noise_lowers_it(rd):
    a = smooth(3, 161, 170)
    assert rd.ms_ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    light, heavy = rd.ms_ssim(noisy(a, 4), a), rd.ms_ssim(noisy(a, 30), a)
    assert np.all(light < 1) and np.all(heavy < light) and np.all(heavy > 0)
    b = noisy(a, 10)
    assert rd.ms_ssim(a, b) == pytest.approx(rd.ms_ssim(b, a), abs=1e-12)  # symmetric


def test_ms_ssim_of_constant_images_by_hand(rd):
    # no variance anywhere: every contrast-structure term is 1, the last scale's luminance
    # term is (2 m1 m2 + C1) / (m1^2 + m2^2 + C1), raised to the last weight
    a, b = np.full((1, 1, 170, 161), 100, np.uint8), np.full((1, 1, 170, 161), 120, np.uint8)
    c1 = (0.01 * 255) ** 2
    lum = (2 * 100 * 120 + c1) / (100**2 + 120**2 + c1)
    assert rd.ms_ssim(a, b)[0] == pytest.approx(lum**0.1333, rel=1e-12)


def test_ms_ssim_colour_is_the_mean_over_channels(rd):
    gray = smooth(2, 165, 161)
    damaged = noisy(gray, 20)
    rgb = np.concatenate([gray, gray, gray], axis=1)
    rgb_damaged = np.concatenate([gray, damaged, gray], axis=1)
    want = (2 + rd.ms_ssim(damaged, gray)) / 3
    assert rd.ms_ssim(rgb_damaged, rgb) == pytest.approx(want, abs=1e-12)


def test_ms_ssim_refuses_small_images_and_quality_gives_none(rd):
    assert rd.MS_SSIM_MIN_SIDE == 161
    assert rd.ms_ssim_applies((1, 1, 161, 400)) and not rd.ms_ssim_applies((1, 1, 400, 160))
    a = images(2, 1, 28, 28)
    with pytest.raises(ValueError, match="161"):
        rd.ms_ssim(a, a)
    q = rd.quality(noisy(a, 5), a)
    assert q["ms_ssim"] is None and 20 < q["psnr"] < 60
    big = smooth(1, 161, 161)
    assert rd.quality(big, big)["ms_ssim"] == pytest.approx(1.0)


# ----------------------------------------------------------------------- openclipart
def test_openclipart_split_deterministic_disjoint_about_15_percent(rd):
    names = [f"cat{i % 7}/file_{i:05d}.png" for i in range(4000)]
    train, test = rd.openclipart_split(names)
    train2, test2 = rd.openclipart_split(list(names))
    assert np.array_equal(train, train2) and np.array_equal(test, test2)
    assert not set(train) & set(test)
    assert sorted([*train, *test]) == list(range(len(names)))
    assert 0.12 < len(test) / len(names) < 0.18
    # the same names on the same side whatever the input order
    perm = np.random.default_rng(0).permutation(len(names))
    shuffled = [names[i] for i in perm]
    _, test_s = rd.openclipart_split(shuffled)
    assert [shuffled[i] for i in test_s] == [names[i] for i in test]
    # equal keys land together
    _, t = rd.openclipart_split(["a.png", "b.png", "a.png"] * 50)
    sides = {k: {i in set(t) for i in range(150) if ["a.png", "b.png", "a.png"][i % 3] == k}
             for k in ("a.png", "b.png")}  # fmt: skip
    assert all(len(s) == 1 for s in sides.values())
    assert rd.openclipart_split(names, test_percent=0)[1].size == 0


def test_load_openclipart_composites_pads_and_drops_symlinks(rd, tmp_path):
    root = tmp_path / "png"
    (root / "animals").mkdir(parents=True)
    (root / "food").mkdir()
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 0] = 200  # red where opaque
    rgba[:, :8, 3] = 255  # left half opaque, right half fully transparent
    Image.fromarray(rgba, "RGBA").save(root / "animals" / "half.png")
    Image.new("RGB", (32, 16), (0, 0, 255)).save(root / "food" / "wide.png")  # 2:1 -> padded
    (root / "food" / "copy.png").symlink_to(root / "animals" / "half.png")
    cache = tmp_path / "cache"
    data = rd.load_openclipart(root, (16, 16), cache)
    assert data["names"] == ["animals/half.png", "food/wide.png"]  # the symlink dropped
    assert data["keys"] == ["half.png", "wide.png"]
    x = data["x"]
    assert x.shape == (2, 3, 16, 16) and x.dtype == np.uint8
    half, wide = x[0].astype(int), x[1].astype(int)
    assert np.all(half[:, :, 10:] == 255)  # transparent -> white
    assert np.all(np.abs(half[:, :, :6] - np.array([200, 0, 0])[:, None, None]) <= 1)
    assert np.all(wide[:, :3] == 255) and np.all(wide[:, -3:] == 255)  # white pad bands
    assert np.all(np.abs(wide[:, 6:10] - np.array([0, 0, 255])[:, None, None]) <= 1)
    # cached: a second call reads the same arrays back
    assert len(list(cache.glob("openclipart-16x16-*.npz"))) == 1
    again = rd.load_openclipart(root, (16, 16), cache)
    assert again["names"] == data["names"] and np.array_equal(again["x"], x)


def test_pil_codec_colour_round_trip_keeps_layout(rd):
    a = images(3, 3, 9, 13)
    files, out, t = rd.pil_codec(a, "PNG")
    assert len(files) == 3 and np.array_equal(out, a)
    assert t["encode_s"] > 0 and t["decode_s"] > 0
    _, out, _ = rd.pil_codec(a, "WEBP", quality=50)
    assert out.shape == a.shape
    g = images(2, 1, 8, 8)
    assert np.array_equal(rd.pil_codec(g, "PNG")[1], g)


def test_avif_support_is_none_or_a_reason(rd):
    why = rd.avif_support()
    assert why is None or (isinstance(why, str) and why)
    if why is None:
        a = smooth(2, 24, 24)
        files, out, _ = rd.pil_codec(a, "AVIF", quality=90)
        assert out.shape == a.shape and rd.quality(out, a)["psnr"] > 30
        assert all(len(f) > 0 for f in files)


# ----------------------------------------------------------------------- targets
def test_the_targets_read_every_point_and_the_front(rd):
    """A dominated point above WebP fails the every-point check but not the front's; a
    front point above WebP fails both; the widest gap counts the range's ends."""
    webp = [{"psnr": 20.0, "bytes_per_image": 100.0}, {"psnr": 40.0, "bytes_per_image": 300.0}]

    def ours(*pairs):
        return [{"model": "m", "levels": 1, "bytes_per_image": b, "psnr": p} for b, p in pairs]

    # WebP: 150 B at 25 dB, 200 at 30, 250 at 35
    # (250, 31): above WebP's 210 there, and beaten by (235, 34) on both counts
    t = rd.check_targets(ours((140, 25.0), (190, 30.0), (235, 34.0), (250, 31.0)), webp)
    assert not t["required_met"] and t["front_met"]
    assert t["front_points_in_range"] == 3
    assert t["front_widest_gap_db"] == pytest.approx(5.0)
    t = rd.check_targets(ours((140, 25.0), (260, 34.0)), webp)
    assert not t["front_met"] and not t["required_met"]
    t = rd.check_targets(ours((140, 25.0), (235, 34.0)), webp)
    assert t["front_met"] and t["required_met"]
    assert t["front_widest_gap_db"] == pytest.approx(9.0)
    assert t["knob_points_in_range"] == 0 and not t["knob_met"]


def test_the_knob_check_reads_only_the_psnr_points(rd):
    """compress --psnr's points are checked on their own: one above WebP fails them, a
    cheaper setting elsewhere does not rescue it; points outside the range do not count."""
    webp = [{"psnr": 20.0, "bytes_per_image": 100.0}, {"psnr": 40.0, "bytes_per_image": 300.0}]
    pts = [{"model": "m", "levels": 1, "bytes_per_image": 140.0, "psnr": 25.0},
           {"model": "m", "levels": 1, "bytes_per_image": 190.0, "psnr": 30.2,
            "psnr_target": 30.0},
           {"model": "m", "levels": 1, "bytes_per_image": 500.0, "psnr": 38.0,
            "psnr_target": 38.0}]  # fmt: skip
    t = rd.check_targets(pts, webp)
    assert t["knob_points_in_range"] == 1 and t["knob_met"]
    pts[1]["bytes_per_image"] = 210.0  # WebP: 202 B at 30.2 dB
    t = rd.check_targets(pts, webp)
    assert not t["knob_met"] and t["points"][1]["psnr_target"] == 30.0
