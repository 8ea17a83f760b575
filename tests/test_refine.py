"""The refinement (compress --max-error): the error bound, lossless round trips, sizes,
the table in the model file, the two modes of a block (by class, from neighbours) and
the format 3 layout still read, a fuzzed decoder, the CLI.

Models are tiny (8x8 digits, one epoch) so the file runs in seconds.
"""

from __future__ import annotations

import dataclasses
import time
import zlib

import numpy as np
import pytest
import torch
from _small_models import fit_small, save_small
from PIL import Image
from typer.testing import CliRunner

from discretae.cli.app import app
from discretae.commands import compress
from discretae.commands.common import load_codec
from discretae.compression.archive import MAGIC, pack_archive, parse_archive
from discretae.compression.codec import Codec, load_refinement, save_prior
from discretae.compression.fitting import fit_prior, fit_refinement
from discretae.compression.refine import N_CLASSES, Refinement
from discretae.core.errors import DiscretaeError
from discretae.data.datasets import load_dataset
from discretae.estimator.discrete_autoencoder import DiscreteAutoencoder

runner = CliRunner()
N_TRAIN = 300


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    x = load_dataset("digits").to_array()
    return np.rint(x * 255).astype(np.uint8)


def fit(x, model="rvq", **kw) -> DiscreteAutoencoder:
    return fit_small(x, model, **kw)


@pytest.fixture(scope="module")
def model(digits, tmp_path_factory):
    """A 2x2-grid rvq model saved with its prior and refinement table."""
    return save_small(digits[:N_TRAIN], tmp_path_factory.mktemp("refine") / "rvq.safetensors")


@pytest.fixture(scope="module")
def codec(model) -> Codec:
    return load_codec(model, device="cpu")


def with_refine_words(codec, data: bytes, x: np.ndarray, version: int | None = None, **kw):
    """The archive ``data`` (one block of the images x) with its refinement coded again by
    ``encode_block(..., **kw)``, as format ``version`` (default: the archive's)."""
    header, names, blocks = parse_archive(data)
    codes = blocks[0][: len(blocks[0]) - header.refine_words[0]]
    sym = codec.decode_archive(data)[0]
    words = codec.refinement.encode_block(x, codec.base_images(sym), sym, header.max_error, **kw)
    header = dataclasses.replace(header, version=version or header.version)
    return pack_archive(header, [codes], names, [words])


@pytest.fixture(scope="module", params=[0, 1], ids=["by-class", "from-neighbours"])
def small(request, codec, digits) -> bytes:
    """A refined archive of 3 images, small enough to fuzz exhaustively, in each mode."""
    x = digits[-3:]
    data = codec.encode_with_refinement(x, max_error=2, names=["a", "b", "c"])
    return with_refine_words(codec, data, x, mode=request.param)


def max_abs(a, b) -> int:
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


# ----------------------------------------------------------------------- the bound
@pytest.mark.parametrize("levels", [1, 2, 3])
def test_error_bound_and_sizes_at_every_level_prefix(codec, digits, levels):
    x = digits[N_TRAIN:]
    plain = len(codec.encode_codes(codec.est.transform(x), levels=levels))
    base = codec.base_images(codec.encode_images(torch.from_numpy(x).float() / 255)[..., :levels])
    sizes = []
    for e in (0, 1, 3, 10):
        data = codec.encode_with_refinement(x, levels=levels, max_error=e)
        images, _, header = codec.decompress(data)
        assert header.max_error == e and header.levels == levels
        assert max_abs(images, x) <= e
        sizes.append(len(data))
    assert max_abs(base, x) > 10  # the codes alone are further off than any bound tried
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == 4
    assert plain < sizes[-1]


@pytest.mark.parametrize(
    "kind,kw",
    [("vq", {}), ("binary", {"n_bits": 5}), ("gumbel", {"latent": "global", "grid": None})],
)
def test_lossless_for_every_model_kind_without_a_table(digits, kind, kw):
    est = fit(digits[:200], model=kind, **kw)
    c = Codec(est, fit_prior(est, digits[:200]))  # no refinement table: one class
    images, _, _ = c.decompress(c.encode_with_refinement(digits[200:400], max_error=0))
    np.testing.assert_array_equal(images, digits[200:400])


@pytest.mark.parametrize("kind,kw", [("binary", {"n_bits": 3}), ("vq", {})])
def test_table_for_models_that_decode_all_levels_only(digits, kind, kw):
    # one-hot and binary grid models decode their full code only: the table's
    # prefix rows are never read, and fitting it must not decode a prefix
    est = fit(digits[:200], model=kind, **kw)
    c = Codec(est, fit_prior(est, digits[:200]), fit_refinement(est, digits[:200]))
    for e in (0, 4):
        images, _, header = c.decompress(c.encode_with_refinement(digits[200:400], max_error=e))
        assert header.max_error == e and max_abs(images, digits[200:400]) <= e


def test_table_makes_smaller_archives_than_one_class(codec, digits):
    x = digits[N_TRAIN:]
    one_class = Codec(codec.est, codec.prior)
    for e in (1, 4):
        with_table = codec.encode_with_refinement(x, max_error=e)
        without = one_class.encode_with_refinement(x, max_error=e)
        assert len(with_table) < len(without)
    classes = codec.refinement.classes(codec.symbols(codec.est.transform(x)), 3)
    assert len(np.unique(classes)) > 2 and classes.max() < N_CLASSES


def test_many_blocks_and_the_streaming_command_agree(codec, model, digits, monkeypatch, tmp_path):
    monkeypatch.setattr("discretae.compression.codec.BLOCK", 64)
    x = digits[:200]
    data = codec.encode_with_refinement(x, max_error=1)
    header, _, blocks = parse_archive(data)
    assert len(blocks) == 4 and len(header.refine_words) == 4
    images, _, _ = codec.decompress(data)
    assert max_abs(images, x) <= 1
    np.save(tmp_path / "x.npy", x[:, 0])
    out = tmp_path / "a.dae"
    result = compress(str(tmp_path / "x.npy"), model=model, out=out, max_error=1, batch_size=50,
                      device="cpu")  # fmt: skip
    assert result["max_error"] == 1
    assert out.read_bytes() == data


# ----------------------------------------------------------------------- the model file
def test_table_survives_the_model_file_and_is_part_of_the_hash(model, codec, digits, tmp_path):
    ref = load_refinement(model)
    assert ref.digest() == codec.refinement.digest() and ref.table.shape[0] == 3
    # a new prior keeps the table; the same network without it is another model
    save_prior(model, codec.prior, out=tmp_path / "again.safetensors")
    assert load_refinement(tmp_path / "again.safetensors").digest() == ref.digest()
    bare = Codec(codec.est, codec.prior)
    assert bare.digest != codec.digest
    with pytest.raises(DiscretaeError, match="different model"):
        bare.decompress(codec.encode_with_refinement(digits[:5], max_error=3))
    with pytest.raises(DiscretaeError, match="refinement table is for images"):
        Codec(codec.est, codec.prior, Refinement((1, 8, 9), (2, 2)))


def test_archives_are_written_as_version_6(codec, digits):
    # versions 1 (no refinement) and 2 (a refinement) are read: tests/test_two_stage.py;
    # versions 4 and 5: tests/test_transform.py
    data = codec.encode_codes(codec.est.transform(digits[:10]))
    assert data[len(MAGIC)] == 6
    assert codec.encode_with_refinement(digits[:10], max_error=0)[len(MAGIC)] == 6


# ----------------------------------------------------------------------- the two modes
def steady_offsets(rng, n, shape, spread=30, cells=2, noise=2):
    """Images x and a base off by a steady amount per region and channel, plus noise: the
    residual a network leaves on a flat area of clip art."""
    x = rng.integers(0, 256, (n, *shape))
    c, h, w = shape
    off = rng.integers(-spread, spread + 1, (n, 1, cells, cells))  # the same in every channel
    off = off.repeat(-(-h // cells), 2).repeat(-(-w // cells), 3)[:, :, :h, :w].repeat(c, 1)
    base = np.clip(x + off + rng.integers(-noise, noise + 1, x.shape), 0, 255)
    return x.astype(np.uint8), base.astype(np.uint8)


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 5, 7), (1, 1, 1), (2, 1, 6), (3, 16, 16)])
def test_both_modes_round_trip_within_the_bound_and_the_shorter_is_kept(shape):
    rng = np.random.default_rng(sum(shape))
    ref = Refinement(shape, (1, 1))  # no table: every symbol in class 0
    codes = np.zeros((40, 1, 1, 1), dtype=np.int64)
    x, base = steady_offsets(rng, 40, shape)
    x[0], base[0] = 255, 0  # the largest residual, in every channel
    x[1], base[1] = 0, 255
    for e in (0, 1, 5, 127):
        sizes = []
        for mode in (0, 1):
            words = ref.encode_block(x, base, codes, e, mode=mode)
            assert max_abs(ref.decode_block(words, base, codes, e), x) <= e, (mode, e)
            sizes.append(len(words))
        assert len(ref.encode_block(x, base, codes, e)) == min(sizes)
        old = ref.encode_block(x, base, codes, e, modes=False)  # formats 2 and 3
        assert max_abs(ref.decode_block(old, base, codes, e, modes=False), x) <= e


@pytest.mark.parametrize("channels", [1, 3])
def test_neighbours_code_steady_offsets_in_far_fewer_bytes(channels):
    rng = np.random.default_rng(channels)
    shape = (channels, 16, 16)
    x, base = steady_offsets(rng, 64, shape, spread=20, cells=4, noise=1)
    ref = Refinement(shape, (1, 1))
    codes = np.zeros((64, 1, 1, 1), dtype=np.int64)
    by_class = len(ref.encode_block(x, base, codes, 1, mode=0))
    neighbours = len(ref.encode_block(x, base, codes, 1, mode=1))
    assert neighbours < 0.75 * by_class, (neighbours, by_class)
    # noise alone has no neighbours to learn from: the classes stay the shorter
    noise = rng.integers(0, 256, x.shape).astype(np.uint8)
    assert len(ref.encode_block(noise, base, codes, 1)) == len(
        ref.encode_block(noise, base, codes, 1, mode=0)
    )


def test_format_3_refined_archives_still_read(codec, digits):
    x = digits[N_TRAIN : N_TRAIN + 100]
    data = codec.encode_with_refinement(x, levels=2, max_error=3)
    old = with_refine_words(codec, data, x, version=3, modes=False)
    assert old[len(MAGIC)] == 3 and old != data
    np.testing.assert_array_equal(codec.decompress(old)[0], codec.decompress(data)[0])
    # and the format 4 words of the same block are not read as format 3
    forced = with_refine_words(codec, data, x, version=3, mode=1)
    try:
        got, _, _ = codec.decompress(forced)
    except DiscretaeError:
        pass
    else:
        assert not np.array_equal(got, codec.decompress(data)[0])


def test_the_benchmark_compares_the_same_archive_by_class(rd, codec, digits):
    x = digits[N_TRAIN : N_TRAIN + 100]
    data = codec.encode_with_refinement(x, levels=2, max_error=3)
    by_class = rd.refined_by_class(codec, data, x)
    assert by_class == with_refine_words(codec, data, x, version=3, modes=False)
    # the shorter of the two modes is kept: never more than the mode's one bit (a word) longer
    assert len(data) <= len(by_class) + 4


def test_crafted_context_lists_are_refused():
    import constriction

    from discretae.compression.refine import N_CONTEXTS, geometric_model

    ref = Refinement((1, 1, 1), (1, 1))  # one pixel: phase A of the first channel, class 0
    x = base = np.full((1, 1, 1, 1), 100, dtype=np.uint8)
    codes = np.zeros((1, 1, 1, 1), dtype=np.int64)
    uniform, top, params = constriction.stream.model.Uniform, 52, (30000, 30000, 30000)

    def words(present):  # one symbol, q = 0, in context 1 (class 0, group 0, no activity)
        coder = constriction.stream.stack.AnsCoder()
        coder.encode_reverse(np.array([top], dtype=np.int32), geometric_model(params, top))
        coder.encode_reverse(np.array(params * len(present), dtype=np.int32), uniform(2**16))
        coder.encode_reverse(np.array(present, dtype=np.int32), uniform(N_CONTEXTS))
        coder.encode_reverse(np.array([len(present)], dtype=np.int32), uniform(N_CONTEXTS + 1))
        coder.encode_reverse(np.array([1], dtype=np.int32), uniform(2))  # mode 1
        return coder.get_compressed()

    np.testing.assert_array_equal(ref.decode_block(words([1]), base, codes, 2), x)
    with pytest.raises(DiscretaeError, match="out of order"):
        ref.decode_block(words([3, 1]), base, codes, 2)
    with pytest.raises(DiscretaeError, match="contexts do not fit"):
        ref.decode_block(words([0]), base, codes, 2)
    with pytest.raises(DiscretaeError, match="does not use"):
        ref.decode_block(words([1, 2]), base, codes, 2)


@pytest.mark.parametrize("bad", [-1, 128, 2.5, True])
def test_max_error_out_of_range_is_refused(codec, digits, bad):
    with pytest.raises(DiscretaeError, match="max_error"):
        codec.encode_with_refinement(digits[:3], max_error=bad)


# ----------------------------------------------------------------------- fuzzing
def with_crc(body: bytes) -> bytes:
    return body + zlib.crc32(body).to_bytes(4, "little")


def decodes(codec, data) -> bool:
    try:
        images, _, header = codec.decompress(data)
    except DiscretaeError:
        return False
    assert images.shape == (header.n_images, 1, 8, 8) and images.dtype == np.uint8
    return True


def test_fuzz_every_truncation_and_bit_flip(codec, small):
    assert decodes(codec, small)
    for n in range(len(small)):
        assert not decodes(codec, small[:n])
    for i in range(8 * len(small)):
        data = bytearray(small)
        data[i // 8] ^= 1 << (i % 8)
        assert not decodes(codec, bytes(data)), f"bit {i} flipped went unnoticed"


def test_fuzz_past_the_checksum(codec, small):
    """Crafted files (mutated, checksum recomputed) end in DiscretaeError or in images of
    the right shape, quickly."""
    rng = np.random.default_rng(0)
    outcomes = set()
    for _ in range(300):
        data = bytearray(small[:-4])
        for _ in range(int(rng.integers(1, 4))):
            data[int(rng.integers(len(MAGIC) + 2, len(data)))] = int(rng.integers(256))
        t = time.perf_counter()
        outcomes.add(decodes(codec, with_crc(bytes(data))))
        assert time.perf_counter() - t < 1.0
    assert False in outcomes


def test_garbage_refinement_words(codec, digits):
    sym = codec.encode_images(torch.from_numpy(digits[:3]).float() / 255)
    base = codec.base_images(sym)
    rng = np.random.default_rng(1)
    for n in (0, 1, 2, 5, 40, 40, 40, 40, 300):
        words = rng.integers(0, 2**32, n, dtype=np.uint32)
        try:
            out = codec.refinement.decode_block(words, base, sym, 2)
            assert out.shape == base.shape
        except DiscretaeError:
            pass


def test_refine_flag_in_a_version_1_header_is_refused(small):
    data = bytearray(small[:-4])
    data[len(MAGIC)] = 1
    with pytest.raises(DiscretaeError, match="unknown flags"):
        parse_archive(with_crc(bytes(data)))


# ----------------------------------------------------------------------- the CLI
def test_cli_lossless_folder_round_trip(model, digits, tmp_path):
    src = tmp_path / "data"
    src.mkdir()
    for i in range(12):
        Image.fromarray(digits[i, 0]).save(src / f"im{i}.png")
    archive, rec = tmp_path / "a.dae", tmp_path / "rec"
    r = runner.invoke(app, ["compress", str(src), "-m", str(model), "-o", str(archive),
                            "--max-error", "0", "--device", "cpu", "--json"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert '"max_error": 0' in r.stdout
    r = runner.invoke(app, ["decompress", str(archive), "-m", str(model), "-o", str(rec),
                            "--device", "cpu", "-q"])  # fmt: skip
    assert r.exit_code == 0, r.output
    for i in range(12):
        np.testing.assert_array_equal(np.asarray(Image.open(rec / f"im{i}.png")), digits[i, 0])
    r = runner.invoke(app, ["compress", str(src), "-m", str(model), "-o",
                            str(tmp_path / "b.dae"), "--max-error", "200"])  # fmt: skip
    assert r.exit_code != 0 and not (tmp_path / "b.dae").exists()


# ----------------------------------------------------------------------- compress --psnr
@pytest.mark.parametrize("target", [18.0, 30.0, 45.0])
def test_psnr_target_takes_the_fewest_bytes_that_reach_it(model, codec, digits, tmp_path, target):
    from discretae.evaluation.metrics import psnr_per_image

    x = digits[N_TRAIN : N_TRAIN + 256]  # as many as the sample: it holds them all
    np.save(tmp_path / "x.npy", x[:, 0])
    out = tmp_path / "t.dae"
    events = []
    result = compress(str(tmp_path / "x.npy"), model=model, out=out, psnr=target, device="cpu",
                      callback=events.append)  # fmt: skip
    chosen = result["psnr_target"]
    assert chosen["sample_images"] == 256 and chosen["sample_psnr"] >= target
    # the search reports each setting measured, then the stream its images
    search = [e for e in events if e["stage"] == "choosing the setting"]
    assert [e["done"] for e in search] == list(range(1, len(chosen["tried"]) + 1))
    # both rate weights searched (0 and 0.1), up to 18 settings a level each
    assert all(e["unit"] == "settings" and e["total"] == 108 for e in search)
    assert {t["rate_weight"] for t in chosen["tried"]} == {0.0, 0.1}
    assert events.index(search[-1]) < min(i for i, e in enumerate(events) if e["stage"] == "encode")
    setting = ("levels", "max_error", "step", "rate_weight")
    assert [result[k] for k in setting] == [chosen[k] for k in setting]
    assert chosen["max_error"] is None or chosen["step"] is None
    # the archive written decodes to images that reach the target
    images, _, _ = codec.decompress(out.read_bytes())
    assert psnr_per_image(images, x).mean() >= target
    # no other setting measured the same way, at either weight, reaches it with fewer
    # bytes (the sample's order may move a coded size by a few bytes)
    for w in (0.0, 0.1):
        _no_cheaper_setting(load_codec(model, "cpu", rate_weight=w), x, target, chosen)


def _no_cheaper_setting(codec, x, target, chosen):
    from discretae.evaluation.metrics import psnr_per_image

    sym = codec.encode_images(torch.from_numpy(x).float() / 255)
    for lv in (1, 2, 3):
        s = sym[..., :lv]
        base = codec.base_images(s)
        codes = len(codec.encode_codes(codec.to_codes_prefix(s), levels=lv))
        bounds = [(e, False) for e in (None, 0, 1, 2, 4, 8, 16, 32, 64, 127)]
        for e, transform in bounds + [(e, True) for e in (1, 2, 4, 8, 16, 32, 64, 128, 255)]:
            got, size = base, codes
            if e is not None:
                words = codec.refine_block(x, s, e, transform)
                got = codec.refined_images(words, base, s, e, transform)
                size += 4 * len(words)
            if psnr_per_image(got, x).mean() >= target:
                assert size / 256 >= chosen["sample_bytes_per_image"] - 0.1, (lv, e, transform)


def test_psnr_target_is_reached_over_all_of_data_when_the_sample_is_easier(
    model, codec, digits, tmp_path, monkeypatch
):
    """The images the sample draws are clean, every other image noisy: the first pass
    falls short over DATA, so compress aims the sample higher and encodes again, and the
    archive's images reach the target over all of DATA, as it reports."""
    from importlib import import_module

    from discretae.evaluation.metrics import psnr_per_image

    mod = import_module("discretae.commands.compress")
    x = digits[N_TRAIN : N_TRAIN + 600].copy()
    np.save(tmp_path / "x.npy", x[:, 0])
    drawn, _ = mod._psnr_sample(codec, load_dataset(str(tmp_path / "x.npy")), 256)
    where = {bytes(a.tobytes()): i for i, a in enumerate(x)}
    sampled = np.zeros(len(x), bool)
    sampled[[where[bytes(a.tobytes())] for a in drawn]] = True
    noise = np.random.default_rng(0).normal(0, 24, x[~sampled].shape)
    x[~sampled] = np.clip(x[~sampled] + noise, 0, 255).astype(np.uint8)
    np.save(tmp_path / "x.npy", x[:, 0])
    again, _ = mod._psnr_sample(codec, load_dataset(str(tmp_path / "x.npy")), 256)
    assert np.array_equal(np.sort(again.reshape(256, -1), 0), np.sort(drawn.reshape(256, -1), 0))

    out = tmp_path / "t.dae"
    result = compress(str(tmp_path / "x.npy"), model=model, out=out, psnr=30.0, device="cpu",
                      rate_weight=0.0)  # fmt: skip
    chosen = result["psnr_target"]
    images, _, _ = codec.decompress(out.read_bytes())
    whole = float(psnr_per_image(images, x).mean())
    assert chosen["passes"] >= 2 and chosen["sample_target_db"] > 30.0
    assert whole >= 30.0 and whole == pytest.approx(chosen["data_psnr"], abs=1e-6)
    # one pass, the sample's choice alone, falls short over DATA and says so
    monkeypatch.setattr(mod, "PSNR_ROUNDS", 1)
    said = []
    one = compress(str(tmp_path / "x.npy"), model=model, out=tmp_path / "one.dae", psnr=30.0,
                   device="cpu", rate_weight=0.0, warn=said.append)["psnr_target"]  # fmt: skip
    assert one["passes"] == 1 and one["sample_psnr"] >= 30.0 > one["data_psnr"]
    assert len(said) == 1 and "--psnr 30: DATA's images decode at" in said[0]


def test_psnr_target_with_a_given_rate_weight_searches_that_weight_alone(model, digits, tmp_path):
    np.save(tmp_path / "x.npy", digits[N_TRAIN : N_TRAIN + 64, 0])
    result = compress(str(tmp_path / "x.npy"), model=model, out=tmp_path / "t.dae", psnr=25.0,
                      rate_weight=0.0, device="cpu")  # fmt: skip
    assert result["rate_weight"] == 0.0
    assert {t["rate_weight"] for t in result["psnr_target"]["tried"]} == {0.0}


def test_psnr_sample_is_drawn_across_the_data(model, codec, digits, tmp_path):
    """A folder sorted by class: the sample holds images of every class, not the first."""
    from importlib import import_module

    for i in range(300):
        cls = tmp_path / "data" / f"c{i % 3}"
        cls.mkdir(parents=True, exist_ok=True)
        Image.fromarray(digits[N_TRAIN + i, 0]).save(cls / f"{i:03d}.png")
    ds = load_dataset(tmp_path / "data", image_size=(8, 8), channels=1)
    x, sym = import_module("discretae.commands.compress")._psnr_sample(codec, ds, 64)
    assert len(x) == len(sym) == 256
    kept = {bytes(a.tobytes()) for a in x}
    by_class = [
        sum(bytes(digits[N_TRAIN + i].tobytes()) in kept for i in range(c, 300, 3))
        for c in range(3)
    ]
    assert min(by_class) > 70, by_class  # in file order: 100, 100 and 56


def test_psnr_target_with_levels_or_out_of_range_is_refused(model, digits, tmp_path):
    np.save(tmp_path / "x.npy", digits[:20, 0])
    out = tmp_path / "a.dae"
    with pytest.raises(DiscretaeError, match="not both"):
        compress(str(tmp_path / "x.npy"), model=model, out=out, psnr=30.0, levels=1)
    with pytest.raises(DiscretaeError, match="above 0"):
        compress(str(tmp_path / "x.npy"), model=model, out=out, psnr=0.0)
    for bad in (["--psnr", "30", "--max-error", "2"], ["--psnr", "0"], ["--psnr", "120"]):
        r = runner.invoke(app, ["compress", str(tmp_path / "x.npy"), "-m", str(model), "-o",
                                str(out), "--device", "cpu", *bad])  # fmt: skip
        assert r.exit_code != 0 and not out.exists(), bad
    r = runner.invoke(app, ["compress", str(tmp_path / "x.npy"), "-m", str(model), "-o",
                            str(out), "--device", "cpu", "--psnr", "25"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "PSNR target" in r.output and out.exists()
