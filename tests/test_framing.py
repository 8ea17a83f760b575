"""Real folders: transparency, aspect ratio, the working size, every file a folder holds,
and the memory plan of fit."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from discretae import DiscreteAutoencoder
from discretae.core.errors import DiscretaeError
from discretae.data import load_dataset
from discretae.data.framing import (
    LEGACY_FRAMING,
    Framing,
    default_working_size,
    frame_pil,
    frame_tensor,
    parse_background,
    parse_image_size,
    placement,
)
from discretae.data.readers import read_image
from discretae.estimator.fitted import framing_from_params
from discretae.models.memory import parse_bytes

WHITE, RED = (255, 255, 255), (255, 0, 0)


def rgba_disk(path, size=(40, 40), hidden=(200, 0, 0)):
    """A black disk on a fully transparent background whose hidden colour is ``hidden``."""
    im = Image.new("RGBA", size, (*hidden, 0))
    ImageDraw.Draw(im).ellipse((10, 10, size[0] - 10, size[1] - 10), fill=(0, 0, 0, 255))
    im.save(path)
    return path


def test_transparency_becomes_the_background_not_the_hidden_colour(tmp_path):
    a = read_image(rgba_disk(tmp_path / "a.png"), (40, 40), 3, framing=Framing())
    assert tuple(a[:, 0, 0]) == WHITE  # a transparent corner
    assert tuple(a[:, 20, 20]) == (0, 0, 0)  # the opaque disk
    black = read_image(tmp_path / "a.png", (40, 40), 3, framing=Framing(background=(0, 0, 0)))
    assert tuple(black[:, 0, 0]) == (0, 0, 0)
    legacy = read_image(tmp_path / "a.png", (40, 40), 3, framing=LEGACY_FRAMING)
    assert tuple(legacy[:, 0, 0]) == (200, 0, 0)  # before: the hidden colour showed


@pytest.mark.parametrize("mode", ["LA", "P"])
def test_gray_and_palette_transparency_composited(tmp_path, mode):
    rgba = Image.open(rgba_disk(tmp_path / "src.png"))
    im = rgba.convert("LA") if mode == "LA" else rgba.convert("P")
    if mode == "P":  # palette index of the corner pixel made transparent
        im.info["transparency"] = im.getpixel((0, 0))
    im.save(
        tmp_path / "x.png", **({"transparency": im.info["transparency"]} if mode == "P" else {})
    )
    a = read_image(tmp_path / "x.png", (40, 40), 3, framing=Framing())
    assert tuple(a[:, 0, 0]) == WHITE and tuple(a[:, 20, 20]) == (0, 0, 0)


def test_pad_keeps_the_aspect_ratio_and_crop_cuts_the_centre(tmp_path):
    # 20 px high, 40 px wide: black on the left half, red on the right half
    im = Image.new("RGB", (40, 20), RED)
    im.paste((0, 0, 0), (0, 0, 20, 20))
    im.save(tmp_path / "wide.png")
    pad = read_image(tmp_path / "wide.png", (16, 16), 3, framing=Framing())
    assert tuple(pad[:, 0, 8]) == WHITE and tuple(pad[:, 15, 8]) == WHITE  # margins
    assert tuple(pad[:, 8, 1]) == (0, 0, 0) and tuple(pad[:, 8, 14]) == RED
    crop = read_image(tmp_path / "wide.png", (16, 16), 3, framing=Framing(resize="crop"))
    assert tuple(crop[:, 0, 8]) != WHITE  # no margin: the centre, rows full
    assert tuple(crop[:, 8, 0]) == (0, 0, 0) and tuple(crop[:, 8, 15]) == RED
    stretch = read_image(tmp_path / "wide.png", (16, 16), 3, framing=Framing(resize="stretch"))
    assert tuple(stretch[:, 0, 2]) == (0, 0, 0)


@pytest.mark.parametrize("resize", ["pad", "crop", "stretch"])
def test_arrays_and_files_are_framed_alike(resize):
    x = torch.zeros(1, 3, 20, 40)
    x[..., 20:] = 1.0  # right half white
    framing = Framing(resize=resize, background=(128, 128, 128))
    t = frame_tensor(x, (16, 16), framing)[0]
    im = Image.fromarray((x[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8))
    p = np.asarray(frame_pil(im, (16, 16), framing)).transpose(2, 0, 1) / 255.0
    assert t.shape == (3, 16, 16)
    # same geometry: margins and halves agree (interpolation differs at the edges only)
    assert np.abs(t.numpy() - p)[:, :, [1, 14]].max() < 0.2


def test_placement_and_sizes():
    assert placement((20, 40), (16, 16), "pad") == ((8, 16), (4, 0))
    assert placement((20, 40), (16, 16), "crop") == ((16, 32), (0, -8))
    assert default_working_size((100, 60)) == (32, 19)
    assert default_working_size((28, 28)) == (28, 28)  # never enlarged
    assert parse_image_size("64x48") == (64, 48) and parse_image_size("64") == 64
    assert parse_background("#FF8000") == (255, 128, 0)
    assert parse_bytes("1.5G") == int(1.5 * 2**30) and parse_bytes("800M") == 800 * 2**20
    for bad in (lambda: parse_image_size("0x3"), lambda: parse_background("pink")):
        with pytest.raises(DiscretaeError):
            bad()
    assert framing_from_params({}) == LEGACY_FRAMING  # model files from before
    assert framing_from_params({"resize": "crop", "background": "black"}) == Framing(
        "crop", (0, 0, 0)
    )


def test_image_over_the_pixel_limit_is_skipped_as_such(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    Image.new("L", (10, 10), 255).save(tmp_path / "a" / "small.png")
    Image.new("L", (200, 200), 0).save(tmp_path / "a" / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    warnings = []
    ds = load_dataset(tmp_path, warn=warnings.append, framing=Framing())
    assert len(ds) == 1 and ds.skipped == ["a/huge.png"]
    assert "over Pillow's pixel limit (40,000 pixels, limit 1,000)" in warnings[0]
    assert "corrupt" not in warnings[0]


def make_every_kind(root):
    """A folder with every kind of file a user's folder holds; -> the readable count."""
    d = root / "kinds"
    d.mkdir()
    Image.fromarray(np.full((12, 12), 40000, np.uint16)).save(d / "sixteen.png")
    Image.fromarray(np.full((12, 12), 0.5, np.float32)).save(d / "float.tif")
    Image.new("CMYK", (12, 12), (0, 255, 255, 0)).save(d / "cmyk.jpg")
    frames = [Image.new("P", (12, 12), c) for c in (1, 2)]
    frames[0].save(d / "anim.gif", save_all=True, append_images=frames[1:])
    green = Image.new("RGB", (12, 12), (0, 200, 0))
    green.save(d / "anim.webp", save_all=True, append_images=[Image.new("RGB", (12, 12))])
    Image.new("P", (12, 12), 3).save(d / "palette.png")
    rotated = Image.new("RGB", (20, 10), (0, 0, 255))
    exif = rotated.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    rotated.save(d / "rotated.jpg", exif=exif)
    name = os.fsencode(d) + b"/caf\xe9.png"  # not UTF-8
    Image.new("L", (12, 12), 9).save(open(name, "wb"), format="PNG")
    rgba_disk(d / "clip.png")
    readable = 9
    (d / "notes.txt").write_text("not an image")
    (d / "drawing.svg").write_text("<svg/>")
    (d / "sound.wav").write_bytes(b"RIFF0000WAVE")
    (d / "empty.png").write_bytes(b"")
    (d / "fake.png").write_text("this is text")
    (d / "loop").symlink_to(d, target_is_directory=True)
    return d, readable


def test_every_file_a_folder_holds(tmp_path):
    folder, readable = make_every_kind(tmp_path)
    warnings = []
    ds = load_dataset(folder, image_size=(8, 8), channels=3, warn=warnings.append,
                      framing=Framing())  # fmt: skip
    x = np.concatenate([b.numpy() for b, _ in ds.batches(4)])
    assert len(x) == readable, ds.skipped
    assert sorted(ds.skipped) == ["empty.png", "fake.png"]
    assert x.min() >= 0 and x.max() <= 1
    names = ds.names
    sixteen = x[names.index("sixteen.png")]
    assert np.allclose(sixteen, 40000 / 65535, atol=0.01)
    cmyk = x[names.index("cmyk.jpg")]  # magenta and yellow ink: red
    assert cmyk[0].mean() > 0.9 and cmyk[1].mean() < 0.1
    tall = x[names.index("rotated.jpg")]  # 20 wide, 10 high, shown turned: tall, so
    assert tall[:, 4, 0].min() > 0.95 and tall[2, 4, 4] > 0.9  # margins left and right
    assert x[names.index("clip.png")][:, 0, 0].min() == 1.0  # transparent corner: white
    with pytest.raises(DiscretaeError, match="empty"):
        load_dataset(folder, strict=True, framing=Framing())


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "discretae.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=600)  # fmt: skip


def test_fit_plans_memory_and_refuses_before_work(tmp_path):
    folder = tmp_path / "art"
    (folder / "a").mkdir(parents=True)
    for i in range(6):
        rgba_disk(folder / "a" / f"{i}.png", size=(100, 60))
    out = tmp_path / "m.safetensors"
    r = run_cli("fit", folder, "--out", out, "--epochs", "1", "--max-memory", "100M", cwd=tmp_path)
    assert r.returncode == 1 and "--max-memory" in r.stderr
    # the budget in the units it was given in, not "0.1 GiB"
    assert "but 100 MB is allowed" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not out.exists()
    r = run_cli(
        "fit", folder, "--out", out, "--epochs", "1", "--codes", "2", "--json", cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["working_size"] == [19, 32] and summary["input_shape"] == [3, 19, 32]
    assert summary["resize"] == "pad" and summary["background"] == "white"
    assert 0 < summary["memory_estimate_mb"] <= summary["memory_budget_mb"]


def test_estimator_image_size_frames_arrays():
    x = np.random.default_rng(0).random((20, 3, 16, 24)).astype(np.float32)
    est = DiscreteAutoencoder(model="vq", n_codes=4, epochs=1, image_size=(8, 8), device="cpu")
    est.fit(x)
    assert est.input_shape_ == (3, 8, 8) and est.framing_ == Framing()


def test_names_that_are_not_utf8_come_back_as_their_bytes(tmp_path):
    folder, _ = make_every_kind(tmp_path)
    model = tmp_path / "m.safetensors"
    est = DiscreteAutoencoder(model="vq", n_codes=2, epochs=1, device="cpu")
    est.fit(np.random.default_rng(0).random((8, 3, 8, 8)).astype(np.float32)).save(model)
    names = tmp_path / "names.txt"
    r = run_cli("encode", folder, "-m", model, "--out", tmp_path / "c.npy", "--with-names",
                names, "--quiet", cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert b"caf\xe9.png\n" in names.read_bytes()


def test_a_model_with_a_working_size_frames_arrays_of_other_sizes(tmp_path):
    from discretae.estimator.fitted import FittedModel

    rng = np.random.default_rng(0)
    x = rng.random((64, 16, 16, 3)).astype(np.float32)
    est = DiscreteAutoencoder("vq", n_codes=4, epochs=1, batch_size=32, image_size=(16, 16))
    est.fit(x)
    tall = rng.random((6, 40, 20, 3)).astype(np.float32)
    # what the model sees: padded to a square over white, then brought to 16x16
    framed = frame_tensor(
        torch.from_numpy(tall).permute(0, 3, 1, 2), (16, 16), Framing("pad", (255, 255, 255))
    )
    np.testing.assert_array_equal(est.transform(tall), est.transform(framed.clamp(0, 1).numpy()))
    path = tmp_path / "m.safetensors"
    est.save(path)
    np.testing.assert_array_equal(FittedModel.load(path).predict(tall), est.predict(tall))
    # without a working size, another size is still refused
    plain = DiscreteAutoencoder("vq", n_codes=4, epochs=1, batch_size=32).fit(x)
    with pytest.raises(DiscretaeError, match="expecting 768 features"):
        plain.transform(tall)
