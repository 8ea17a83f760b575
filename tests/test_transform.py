"""The transform refinement (compress --step): exact round trips of the block stream on
any shape, the step as a rate knob, archive format 5 (flag bit 3) and the formats before
it, a fuzzed decoder, and the CLI with real image files.

Models are tiny (8x8 digits, one epoch; a 12x12 colour model) so the file runs in seconds.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest
import torch
from _small_models import save_small
from PIL import Image

from discretae.commands.common import load_codec
from discretae.compression import transform
from discretae.compression.archive import FLAG_TRANSFORM, MAGIC, pack_archive, parse_archive
from discretae.compression.codec import Codec
from discretae.core.errors import DiscretaeError
from discretae.data.datasets import load_dataset
from discretae.evaluation.metrics import psnr_per_image

N_TRAIN = 300


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    x = load_dataset("digits").to_array()
    return np.rint(x * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def model(digits, tmp_path_factory):
    return save_small(digits[:N_TRAIN], tmp_path_factory.mktemp("transform") / "rvq.safetensors")


@pytest.fixture(scope="module")
def codec(model) -> Codec:
    return load_codec(model, device="cpu")


def smooth_pair(rng, n, shape):
    """Images and a base off by a smooth field plus a few sharp steps: what a decoder
    leaves on clip art."""
    c, h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    field = np.stack([40 * np.sin(xx / (2 + k) + yy / (3 + k)) for k in range(c)])
    x = rng.integers(0, 256, (n, c, h, w)).astype(np.int16)
    off = field[None] + rng.normal(0, 3, (n, c, h, w))
    off[:, :, : h // 2, : w // 3] += 60
    base = np.clip(x + off, 0, 255).astype(np.uint8)
    return x.astype(np.uint8), base


# ----------------------------------------------------------------------- the block stream
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 12, 12), (3, 7, 10), (4, 5, 9), (1, 1, 1)])
@pytest.mark.parametrize("step", [1, 6, 40, 255])
@pytest.mark.parametrize("layout", transform.LAYOUTS)
def test_round_trip_is_the_encoders_reconstruction(shape, step, layout):
    rng = np.random.default_rng(step)
    x, base = smooth_pair(rng, 5, shape)
    a, b = -(-shape[1] // 4), -(-shape[2] // 4)
    expect = rng.integers(0, transform.N_EXPECT, (5, a, b))
    words = transform.encode_block(x, base, step, expect, layout=layout)
    got = transform.decode_block(words, base, step, expect, layout=layout)
    assert got.shape == x.shape and got.dtype == np.uint8
    want = transform.reconstruct(transform.quantize(x, base, step, expect, layout), base, step)
    np.testing.assert_array_equal(got, want)
    if step == 1:  # the finest step is within rounding of the images
        assert np.abs(got.astype(int) - x).max() <= 2


def test_an_empty_block_round_trips():
    x = np.zeros((0, 3, 8, 8), dtype=np.uint8)
    words = transform.encode_block(x, x, 10)
    assert transform.decode_block(words, x, 10).shape == x.shape


def test_transforms_are_orthonormal_and_invert():
    rng = np.random.default_rng(0)
    r = rng.normal(0, 20, (2, 3, 9, 13))
    c = transform.forward(r)
    assert c.shape == (2, 3, 3, 4, 16)
    np.testing.assert_allclose(transform.inverse(c, r.shape[1:]), r, atol=1e-9)
    square = rng.normal(0, 20, (2, 3, 8, 8))  # no padding: the energy is kept
    np.testing.assert_allclose((transform.forward(square) ** 2).sum(), (square**2).sum())


def test_rate_distortion_quantization_lowers_the_lagrangian():
    """Each symbol is the nearest magnitude or the one below it, and the encoder's choice
    costs less than the dead zone's in squared error (in steps) plus RD_LAMBDA times the
    real stream's bits, while both decode to what their quantizer reconstructs."""
    rng = np.random.default_rng(7)
    x, base = smooth_pair(rng, 40, (3, 16, 16))
    step = 12
    coef = transform.forward(x.astype(np.int16) - base.astype(np.int16)) / step
    q = transform.quantize(x, base, step)
    near = np.floor(np.abs(coef) + 0.5)
    assert np.all((np.abs(q) == near) | (np.abs(q) == near - 1))
    assert np.all((q == 0) | (np.sign(q) == np.sign(coef)))

    def lagrangian(words, q):
        got = transform.decode_block(words, base, step)
        np.testing.assert_array_equal(got, transform.reconstruct(q, base, step))
        error = ((coef - q) ** 2).sum()
        return error + transform.RD_LAMBDA * 32 * len(words)

    chosen = lagrangian(transform.encode_block(x, base, step), q)
    fixed_q = transform.dead_zone(x, base, step)
    fixed = lagrangian(transform.encode_block(x, base, step, rd=False), fixed_q)
    assert chosen < 0.97 * fixed


def test_smaller_steps_cost_more_and_come_closer():
    rng = np.random.default_rng(1)
    x, base = smooth_pair(rng, 20, (3, 16, 16))
    sizes, psnrs = [], []
    for step in (80, 40, 20, 10, 5):
        words = transform.encode_block(x, base, step)
        sizes.append(len(words))
        psnrs.append(psnr_per_image(transform.decode_block(words, base, step), x).mean())
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1] / 3
    assert psnrs == sorted(psnrs) and psnrs[-1] > psnrs[0] + 15


def test_neighbour_classes_save_bytes_where_the_residual_clusters(monkeypatch):
    """A residual that is noise in one rectangle of each image and 0 elsewhere (edges a
    decoder missed): the classes from the blocks above and to the left code it in fewer
    bytes than the same coder with one class per component and frequency, and both
    decode."""
    rng = np.random.default_rng(2)
    n, shape = 100, (3, 32, 32)
    base = np.full((n, *shape), 128, dtype=np.uint8)
    x = base.astype(np.int16)
    for i in range(n):
        r0, c0 = rng.integers(0, 25, 2)
        x[i, :, r0 : r0 + 8, c0 : c0 + 8] += rng.normal(0, 30, (3, 8, 8)).astype(np.int16)
    x = np.clip(x, 0, 255).astype(np.uint8)
    with_context = transform.encode_block(x, base, 12)
    classes = transform._classes

    def alone(q, rows, cols, expect=None):  # neighbourhood and activity 0 for every symbol
        k = classes(np.zeros_like(q), rows, cols, expect)
        return k.astype(np.uint16)

    monkeypatch.setattr(transform, "_classes", alone)
    without = transform.encode_block(x, base, 12)
    np.testing.assert_array_equal(
        transform.decode_block(without, base, 12),
        transform.reconstruct(transform.quantize(x, base, 12), base, 12),
    )
    assert len(with_context) < 0.9 * len(without)


@pytest.mark.parametrize("bad", [0, 256, -1, 2.5, True])
def test_bad_steps_are_refused(bad):
    x = np.zeros((1, 1, 4, 4), dtype=np.uint8)
    with pytest.raises(DiscretaeError, match="step"):
        transform.encode_block(x, x, bad)


def test_garbage_words_end_in_a_clear_error_or_images():
    rng = np.random.default_rng(3)
    base = rng.integers(0, 256, (3, 3, 8, 8)).astype(np.uint8)
    outcomes = set()
    for n in (0, 1, 2, 5, 40, 40, 40, 300):
        words = rng.integers(0, 2**32, n, dtype=np.uint32)
        try:
            out = transform.decode_block(words, base, 10)
            assert out.shape == base.shape
            outcomes.add(True)
        except DiscretaeError:
            outcomes.add(False)
    assert False in outcomes


# ----------------------------------------------------------------------- archives
def test_archive_round_trip_flag_and_version(codec, digits):
    x = digits[N_TRAIN : N_TRAIN + 40]
    data = codec.encode_with_refinement(x, levels=2, max_error=6, transform=True)
    header, _, _ = parse_archive(data)
    assert data[len(MAGIC)] == 6 and data[len(MAGIC) + 1] & FLAG_TRANSFORM
    assert header.transform and header.max_error == 6 and header.levels == 2
    images, _, _ = codec.decompress(data)
    sym = codec.encode_images(torch.from_numpy(x).float() / 255)[..., :2]
    base = codec.base_images(sym)
    expect = codec.transform_expectation(sym, 6)
    want = transform.reconstruct(transform.quantize(x, base, 6, expect), base, 6)
    np.testing.assert_array_equal(images, want)
    assert psnr_per_image(images, x).mean() > psnr_per_image(base, x).mean() + 5


def test_the_benchmarks_dead_zone_peer_is_the_same_archive_quantized_alone(rd, codec, digits):
    """The benchmark's peer: the same header and codes, the residual quantized by the
    dead zone, which decodes to that quantizer's reconstruction."""
    x = digits[N_TRAIN : N_TRAIN + 40]
    data = codec.encode_with_refinement(x, levels=1, max_error=8, transform=True)
    fixed = rd.dead_zone_archive(codec, data, x)
    assert fixed != data and fixed[: len(MAGIC) + 2] == data[: len(MAGIC) + 2]
    sym = codec.decode_archive(data)[0]
    np.testing.assert_array_equal(codec.decode_archive(fixed)[0], sym)
    base = codec.base_images(sym)
    want = transform.reconstruct(transform.dead_zone(x, base, 8), base, 8)
    np.testing.assert_array_equal(codec.decompress(fixed)[0], want)


def test_version_4_archives_still_read_and_refuse_the_flag(codec, digits):
    x = digits[N_TRAIN : N_TRAIN + 10]
    bounded = codec.encode_with_refinement(x, max_error=3)
    header, names, blocks = parse_archive(bounded)
    extra = header.refine_words[0]
    old = pack_archive(dataclasses.replace(header, version=4), [blocks[0][:-extra]], names,
                       [blocks[0][-extra:]])  # fmt: skip
    assert old[len(MAGIC)] == 4
    np.testing.assert_array_equal(codec.decompress(old)[0], codec.decompress(bounded)[0])
    flagged = bytearray(old[:-4])
    flagged[len(MAGIC) + 1] |= FLAG_TRANSFORM
    body = bytes(flagged)
    with pytest.raises(DiscretaeError, match="unknown flags"):
        parse_archive(body + zlib.crc32(body).to_bytes(4, "little"))
    with pytest.raises(ValueError, match="version 5"):
        pack_archive(dataclasses.replace(header, version=4, transform=True), [blocks[0][:-extra]],
                     names, [blocks[0][-extra:]])  # fmt: skip


def test_version_5_transform_archives_still_read(codec, digits):
    """A format-5 transform archive (classes without the expectation, 16-bit parameters,
    the classes as a list) decodes to what its encoder reconstructed."""
    x = digits[N_TRAIN : N_TRAIN + 30]
    data = codec.encode_with_refinement(x, levels=2, max_error=6, transform=True)
    header, names, blocks = parse_archive(data)
    extra = header.refine_words[0]
    sym = codec.decode_archive(data)[0]
    base = codec.base_images(sym)
    words5 = transform.encode_block(x, base, 6, layout=5)
    old = pack_archive(dataclasses.replace(header, version=5), [blocks[0][:-extra]], names,
                       [words5])  # fmt: skip
    assert old[len(MAGIC)] == 5 and old != data
    want = transform.reconstruct(transform.quantize(x, base, 6, layout=5), base, 6)
    np.testing.assert_array_equal(codec.decompress(old)[0], want)
    expect = codec.transform_expectation(sym, 6)
    want = transform.reconstruct(transform.quantize(x, base, 6, expect), base, 6)
    np.testing.assert_array_equal(codec.decompress(data)[0], want)


def test_fuzz_past_the_checksum(codec, digits):
    """A transform archive of 3 images, mutated with the checksum recomputed: each ends in
    DiscretaeError or images of the right shape, quickly; every truncation is refused."""
    small = codec.encode_with_refinement(digits[-3:], max_error=8, transform=True)
    for n in range(len(small)):
        with pytest.raises(DiscretaeError):
            codec.decompress(small[:n])
    rng = np.random.default_rng(0)
    outcomes = set()
    for _ in range(300):
        data = bytearray(small[:-4])
        for _ in range(int(rng.integers(1, 4))):
            data[int(rng.integers(len(MAGIC) + 2, len(data)))] = int(rng.integers(256))
        body = bytes(data)
        t = time.perf_counter()
        try:
            images, _, header = codec.decompress(body + zlib.crc32(body).to_bytes(4, "little"))
            assert images.shape == (header.n_images, 1, 8, 8)
            outcomes.add(True)
        except DiscretaeError:
            outcomes.add(False)
        assert time.perf_counter() - t < 1.0
    assert False in outcomes


def test_step_out_of_range_in_a_header_is_refused(codec, digits):
    data = codec.encode_with_refinement(digits[:3], max_error=8, transform=True)
    header, names, blocks = parse_archive(data)
    extra = header.refine_words[0]
    for bad in (0, 256):
        forged = pack_archive(dataclasses.replace(header, max_error=bad), [blocks[0][:-extra]],
                              names, [blocks[0][-extra:]])  # fmt: skip
        with pytest.raises(DiscretaeError, match="residual step"):
            parse_archive(forged)


# ----------------------------------------------------------------------- the CLI, colour
def test_cli_colour_folder_with_a_step_and_with_psnr(tmp_path):
    """Real PNG files of colour shapes through the installed command: --step writes a
    transform archive that decompresses to the same images the library decodes, a step
    with a max error is one clear line, and --psnr reports the setting it chose."""
    rng = np.random.default_rng(0)
    src = tmp_path / "shapes"
    src.mkdir()
    images = []
    for i in range(40):
        im = np.full((12, 12, 3), 255, dtype=np.uint8)
        r0, c0 = rng.integers(0, 6, 2)
        im[r0 : r0 + 6, c0 : c0 + 6] = rng.integers(0, 256, 3)
        images.append(im)
        Image.fromarray(im).save(src / f"s{i:02d}.png")
    x = np.stack(images).transpose(0, 3, 1, 2)
    model = save_small(x, tmp_path / "colour.safetensors", grid=(3, 3))

    def cli(*args):
        cmd = [sys.executable, "-m", "discretae.cli", *args, "--device", "cpu"]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300)

    out = tmp_path / "s.dae"
    r = cli("compress", str(src), "-m", str(model), "-o", str(out), "--step", "12", "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["step"] == 12 and result["max_error"] is None
    r = cli("decompress", str(out), "-m", str(model), "-o", str(tmp_path / "rec"), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["step"] == 12
    got = np.stack([np.asarray(Image.open(tmp_path / "rec" / f"s{i:02d}.png")) for i in range(40)])
    codec = load_codec(model, device="cpu")
    np.testing.assert_array_equal(got.transpose(0, 3, 1, 2), codec.decompress(out.read_bytes())[0])
    assert psnr_per_image(got.transpose(0, 3, 1, 2), x).mean() > 30

    bad = tmp_path / "bad.dae"
    r = cli("compress", str(src), "-m", str(model), "-o", str(bad), "--step", "4", "-e", "2")
    assert r.returncode != 0 and not bad.exists()
    assert "max error or a step" in r.stderr and len(r.stderr.strip().splitlines()) == 1

    r = cli("compress", str(src), "-m", str(model), "-o", str(tmp_path / "p.dae"), "--psnr",
            "38", "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr
    chosen = json.loads(r.stdout)["psnr_target"]
    assert chosen["sample_psnr"] >= 38 and chosen["data_psnr"] >= 38
    assert any(t["step"] is not None for t in chosen["tried"])
    # the table names the target and what all of DATA decodes to
    r = cli("compress", str(src), "-m", str(model), "-o", str(tmp_path / "q.dae"), "--psnr", "38")
    assert r.returncode == 0, r.stderr
    assert re.search(r"38 dB: \d+\.\d\d dB over DATA", r.stdout), r.stdout


def test_the_benchmark_measures_transform_points(rd, model, codec, digits, tmp_path):
    """Each step on every level prefix, on the nearest codes and on the codes of each
    rate weight: real archives, and each with its dead-zone peer."""
    from discretae.commands.common import load_codec

    x = digits[N_TRAIN : N_TRAIN + 60]
    points = rd.measure_model(model, x, tmp_path, rate_weights=(0.05,), steps=(8, 32))
    stepped = [p for p in points if p.get("step") is not None]
    assert [(p["rate_weight"], p["levels"], p["step"]) for p in stepped] == [
        (w, lv, s) for w in (0.0, 0.05) for lv in (1, 2, 3) for s in (8, 32)
    ]
    weighted = load_codec(model, device="cpu", rate_weight=0.05)
    for p in stepped:
        coder = weighted if p["rate_weight"] else codec
        data = coder.encode_with_refinement(x, levels=p["levels"], max_error=p["step"],
                                            transform=True)  # fmt: skip
        assert p["archive_bytes"] == len(data)
        assert p["psnr"] == pytest.approx(psnr_per_image(codec.decompress(data)[0], x).mean())
        assert p["dead_zone_bytes_per_image"] > 0 and p["dead_zone_psnr"] > 0
    assert rd.point_label({"model": "m", **stepped[0]}, {"m"}) == "m L1 s8"
    assert rd.point_label({"model": "m", **stepped[-1]}, {"m"}) == "m L3 s32 w0.05"


def test_the_benchmark_measures_what_compress_psnr_writes(rd, model, codec, digits, tmp_path):
    """A --psnr-targets point is the archive of compress --psnr on the test images: its
    bytes and setting are the command's, scored on every test image."""
    from discretae.commands.compress import compress

    x = digits[N_TRAIN : N_TRAIN + 60]
    (point,) = rd.measure_model(model, x, tmp_path, psnr_targets=(30.0,))[-1:]
    np.save(tmp_path / "x.npy", x)
    got = compress(str(tmp_path / "x.npy"), model=model, out=tmp_path / "p.dae", psnr=30.0)
    assert point["psnr_target"] == 30.0
    assert point["archive_bytes"] == got["archive_bytes"]
    for key in ("levels", "max_error", "step", "rate_weight"):
        assert point[key] == got[key]
    assert point["psnr"] == pytest.approx(
        psnr_per_image(codec.decompress((tmp_path / "p.dae").read_bytes())[0], x).mean()
    )
    assert rd.point_label({"model": "m", **point}, set()).endswith("(--psnr 30)")


def test_every_quantized_value_lies_within_the_step_bound():
    """The extreme residuals (+-255 over a whole block, every channel alike) stay within
    top_bound, which the decoder holds a class's range to."""
    for c in (1, 3, 4):
        x = np.full((2, c, 4, 4), 255, dtype=np.uint8)
        x[1] = 0
        base = 255 - x
        for step in (1, 2, 7, 255):
            q = transform.quantize(x, base, step)
            assert np.abs(q).max() <= transform.top_bound(step) < transform.TOP_LIMIT


# ----------------------------------------------------------------------- format 6
def test_expectation_buckets_count_quarter_steps_of_the_mean():
    """16 x mean |residual| per pixel -> per 4x4 block of a 1x5x6 image, the number of
    edges (1/4, 1/2, 1, 2 steps) the block's mean over its pixels inside the image
    reaches; integer arithmetic, so an exact edge counts."""
    step = 8
    means = np.zeros((1, 1, 5, 6), dtype=np.int64)
    means[0, 0, :4, :4] = 16 * 2  # mean 2 = 1/4 step: 1 edge
    means[0, 0, :4, 4:] = 16 * 16  # mean 16 = 2 steps: all 4
    means[0, 0, 4, :4] = 16 * 5  # 5 = between 1/2 and 1 step: 2
    means[0, 0, 4, 4:] = 16 * 4 - 1  # just below 1/2 step: 1
    got = transform.expectation(means, 1, (1, 5, 6), step)
    np.testing.assert_array_equal(got, [[[1, 4], [2, 1]]])
    assert transform.expectation(None, 2, (3, 5, 6), step).shape == (2, 2, 2)
    assert not transform.expectation(None, 2, (3, 5, 6), step).any()


def test_the_expectation_saves_bytes_where_it_tells_busy_blocks_apart():
    """A residual that is noise in the blocks whose bucket says so and 0 elsewhere costs
    fewer bytes with those buckets than with every bucket 0, and both decode."""
    rng = np.random.default_rng(4)
    n, shape = 60, (3, 32, 32)
    expect = (rng.random((n, 8, 8)) < 0.3) * (transform.N_EXPECT - 1)
    base = np.full((n, *shape), 128, dtype=np.uint8)
    busy = np.repeat(np.repeat(expect > 0, 4, axis=1), 4, axis=2)[:, None]
    noise = rng.normal(0, 25, (n, *shape)) * busy
    x = np.clip(base + noise, 0, 255).astype(np.uint8)
    told = transform.encode_block(x, base, 10, expect)
    blind = transform.encode_block(x, base, 10)
    want = transform.reconstruct(transform.quantize(x, base, 10, expect), base, 10)
    np.testing.assert_array_equal(transform.decode_block(told, base, 10, expect), want)
    want = transform.reconstruct(transform.quantize(x, base, 10), base, 10)
    np.testing.assert_array_equal(transform.decode_block(blind, base, 10), want)
    assert len(told) < 0.95 * len(blind)


@pytest.mark.parametrize("count", [0, 1, 7, 200, 431, 432])
def test_the_classes_present_round_trip_as_a_list_or_a_mask(count):
    import constriction

    total = 432
    present = sorted(np.random.default_rng(count).choice(total, count, replace=False).tolist())
    coder = constriction.stream.stack.AnsCoder()
    transform._push_present(coder, present, total, 6)
    back = constriction.stream.stack.AnsCoder(coder.get_compressed())
    assert transform._pop_present(back, total, 6) == present and back.is_empty()
