"""encode and compress read DATA through one adapter: what one accepts, the other does.

An RGB model takes a folder of gray PNGs in both (each image repeated into RGB as it is
decoded); a gray model refuses a color image in both, with the same message. compress
once loaded DATA on its own and refused gray images for an RGB model.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from discretae.commands import compress, decompress, encode, fit
from discretae.core.errors import DiscretaeError

N_GRAY = 7


@pytest.fixture(scope="module")
def rgb_model(tmp_path_factory) -> Path:
    """A tiny vq model fitted (1 epoch) on random 8x8 RGB images, with its code prior."""
    root = tmp_path_factory.mktemp("rgb")
    images = np.random.default_rng(0).integers(0, 256, (32, 8, 8, 3), dtype=np.uint8)
    np.save(root / "rgb.npy", images)
    out = root / "rgb.safetensors"
    fit(str(root / "rgb.npy"), out=out, model="vq", codes=8, epochs=1, batch_size=16,
        device="cpu")  # fmt: skip
    return out


@pytest.fixture(scope="module")
def gray_folder(tmp_path_factory) -> Path:
    """N_GRAY gray 10x10 PNGs (mode L) in two labelled subfolders."""
    root = tmp_path_factory.mktemp("gray") / "gray"
    rng = np.random.default_rng(1)
    for i in range(N_GRAY):
        (root / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        image = rng.integers(0, 256, (10, 10), dtype=np.uint8)
        Image.fromarray(image, mode="L").save(root / f"c{i % 2}" / f"im{i}.png")
    return root


def test_encode_and_compress_take_gray_images_for_an_rgb_model(rgb_model, gray_folder, tmp_path):
    codes = tmp_path / "codes.npy"
    encoded = encode(str(gray_folder), model=rgb_model, out=codes, device="cpu")
    assert encoded["n_images"] == N_GRAY and len(np.load(codes)) == N_GRAY
    archive = tmp_path / "gray.dae"
    compressed = compress(str(gray_folder), model=rgb_model, out=archive, device="cpu")
    assert compressed["n_images"] == N_GRAY and compressed["names"] is True
    # the archive holds the codes encode wrote: the same images met the same model
    back = tmp_path / "back.npy"
    decompress(archive, model=rgb_model, out=tmp_path / "rec", codes_out=back, device="cpu")
    np.testing.assert_array_equal(np.load(back), np.load(codes))
    assert len(list((tmp_path / "rec").rglob("*.png"))) == N_GRAY


def test_a_gray_model_refuses_color_alike(tmp_path):
    gray = np.random.default_rng(2).integers(0, 256, (24, 8, 8), dtype=np.uint8)
    np.save(tmp_path / "gray.npy", gray)
    model = tmp_path / "gray.safetensors"
    fit(str(tmp_path / "gray.npy"), out=model, model="vq", codes=4, epochs=1, device="cpu")
    color = tmp_path / "color"
    color.mkdir()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(color / "red.png")
    messages = []
    for command, out in ((encode, "c.npy"), (compress, "c.dae")):
        with pytest.raises(DiscretaeError) as e:
            command(str(color), model=model, out=tmp_path / out, device="cpu")
        messages.append(str(e.value))
        assert not (tmp_path / out).exists()
    assert messages[0] == messages[1] and "expects gray images" in messages[0]


def test_cli_encode_and_compress_in_a_subprocess(rgb_model, gray_folder, tmp_path):
    """`python -m discretae.cli`, a real process, on the gray folder with the RGB model."""
    results = {}
    for command, out in (("encode", "codes.npy"), ("compress", "gray.dae")):
        argv = [sys.executable, "-m", "discretae.cli", command, str(gray_folder),
                "-m", str(rgb_model), "--out", str(tmp_path / out), "--device", "cpu",
                "--json"]  # fmt: skip
        r = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        results[command] = json.loads(r.stdout)
    assert results["encode"]["n_images"] == N_GRAY
    assert results["encode"]["shape"][0] == N_GRAY
    assert results["compress"]["n_images"] == N_GRAY
    assert len(np.load(tmp_path / "codes.npy")) == N_GRAY
