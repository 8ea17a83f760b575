"""What the fast encode path must keep: a folder is listed, not probed, before streaming;
images are fitted to the model's channels as they are decoded (color refused for a gray
model, gray repeated for an RGB one); workers send uint8 batches that become the same
floats as before; PNG orientation tags are still honoured."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin

from discretae import DiscretaeError, DiscreteAutoencoder
from discretae.commands import encode
from discretae.data import readers
from discretae.data.datasets import load_dataset
from discretae.data.readers import ColorImageError, read_image


def write_gray(root: Path, n: int, seed: int = 0) -> np.ndarray:
    """n 10x10 gray PNGs im000.png ...; returns them as (n, 10, 10) uint8."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 10, 10), dtype=np.uint8)
    root.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images):
        Image.fromarray(im).save(root / f"im{i:03d}.png")
    return images


@pytest.fixture(scope="module")
def gray_model(tmp_path_factory) -> Path:
    images = np.random.default_rng(1).integers(0, 256, (40, 10, 10), dtype=np.uint8)
    path = tmp_path_factory.mktemp("gray") / "m.safetensors"
    DiscreteAutoencoder(model="vq", n_codes=5, epochs=1, width=8, device="cpu").fit(images).save(
        path
    )
    return path


def test_encode_lists_the_folder_without_probing_it(tmp_path, gray_model, monkeypatch):
    images = write_gray(tmp_path / "data", 30)

    def no_probe(*args, **kwargs):
        raise AssertionError("encode probed a file before streaming")

    monkeypatch.setattr(readers, "probe_image", no_probe)
    out = tmp_path / "codes.npy"
    encode(str(tmp_path / "data"), model=gray_model, out=out, workers=1, device="cpu")
    est = DiscreteAutoencoder.load(gray_model, device="cpu")
    assert np.array_equal(np.load(out), est.transform(images).astype(np.load(out).dtype))


def test_a_color_image_midway_refuses_the_whole_encode(tmp_path, gray_model):
    data = tmp_path / "data"
    write_gray(data, 40)
    Image.new("RGB", (10, 10), (200, 30, 30)).save(data / "im021.png")  # replaces a gray one
    out, names = tmp_path / "codes.npy", tmp_path / "names.txt"
    with pytest.raises(DiscretaeError) as e:
        encode(
            str(data), model=gray_model, out=out, with_names=names, batch_size=8, workers=1,
            device="cpu",
        )  # fmt: skip
    message = str(e.value)
    assert "im021.png" in message and "1 channel" in message and "3 channels" in message
    assert "\n" not in message
    assert not out.exists() and not names.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["data"]  # no temporary file left


def test_an_rgb_model_takes_gray_images_repeated_into_rgb(tmp_path):
    rgb = np.random.default_rng(2).integers(0, 256, (40, 10, 10, 3), dtype=np.uint8)
    est = DiscreteAutoencoder(model="vq", n_codes=5, epochs=1, width=8, device="cpu").fit(rgb)
    est.save(tmp_path / "rgb.safetensors")
    gray = write_gray(tmp_path / "data", 12)
    out = tmp_path / "codes.npy"
    r = encode(str(tmp_path / "data"), model=tmp_path / "rgb.safetensors", out=out)
    assert r["n_images"] == 12
    expected = est.transform(np.repeat(gray[..., None], 3, axis=-1))
    assert np.array_equal(np.load(out), expected.astype(np.load(out).dtype))


def test_color_arrays_are_refused_for_gray_only(tmp_path):
    np.save(tmp_path / "rgb.npy", np.zeros((4, 6, 6, 3), np.uint8))
    with pytest.raises(ColorImageError, match="3 channels"):
        load_dataset(tmp_path / "rgb.npy", channels=1, gray_from_color=False)
    gray = load_dataset(tmp_path / "rgb.npy", channels=1)  # the default turns them gray
    assert gray.shape == (1, 6, 6)


def test_worker_batches_hold_the_same_floats_as_single_items(tmp_path):
    write_gray(tmp_path, 5)
    Image.fromarray(np.full((10, 10), 40000, np.uint16)).save(tmp_path / "wide.png")
    ds = load_dataset(tmp_path, image_size=(10, 10), channels=1, warn=lambda m: None)
    one_by_one = torch.stack([ds[i][0] for i in range(len(ds))])
    for workers in (0, 1):
        x = torch.cat([b for b, _ in ds.batches(batch_size=4, num_workers=workers)])
        assert x.dtype == torch.float32 and torch.equal(x, one_by_one)
    assert float(one_by_one[-1].max()) == pytest.approx(40000 / 65535)
    first = np.asarray(Image.open(tmp_path / "im000.png")) / np.float32(255)
    assert torch.equal(one_by_one[0, 0], torch.from_numpy(first))


def orient_tagged_png(path: Path, how: str) -> None:
    """A 4x8 (H, W) PNG, left half white, tagged 'rotate 90 clockwise' (orientation 6)."""
    a = np.zeros((4, 8), np.uint8)
    a[:, :4] = 255
    if how == "exif":
        exif = Image.Exif()
        exif[0x0112] = 6
        Image.fromarray(a).save(path, exif=exif)
    else:
        info = PngImagePlugin.PngInfo()
        xmp = '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:Description tiff:Orientation="6"/>'
        info.add_itxt("XML:com.adobe.xmp", xmp + "</x:xmpmeta>")
        Image.fromarray(a).save(path, pnginfo=info)


@pytest.mark.parametrize("how", ["exif", "xmp"])
def test_png_orientation_tags_are_applied(tmp_path, how):
    orient_tagged_png(tmp_path / "r.png", how)
    x = read_image(tmp_path / "r.png", (8, 4), 1)
    assert x.dtype == np.uint8 and x.shape == (1, 8, 4)  # portrait after the rotation
    assert (x[0, :4] == 255).all() and (x[0, 4:] == 0).all()  # stored left half -> top
    probed, _ = readers.probe_image(tmp_path / "r.png", full=False)
    assert probed == (8, 4)
