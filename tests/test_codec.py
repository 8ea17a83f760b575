"""Code archives: exact round trips, real sizes, refused models, a fuzzed decoder, the CLI.

Models are tiny (8x8 digits, one epoch, a few hundred images) so the file runs in seconds.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from discretae.cli.app import app
from discretae.commands import compress, decompress
from discretae.commands.common import load_codec
from discretae.compression.ans import MIN_BITS_PER_SYMBOL
from discretae.compression.archive import FORMAT_VERSION, MAGIC, parse_archive
from discretae.compression.codec import Codec, load_prior, save_prior
from discretae.compression.fitting import fit_prior
from discretae.compression.prior import P_MAX
from discretae.core.errors import DiscretaeError
from discretae.data.datasets import load_dataset
from discretae.estimator.discrete_autoencoder import DiscreteAutoencoder

runner = CliRunner()
N_TRAIN = 300


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    """(N, 1, 8, 8) uint8: scikit-learn's digits on 0..255."""
    x = load_dataset("digits").to_array()
    return np.rint(x * 255).astype(np.uint8)


def fit(x, model="rvq", seed=0, **kw) -> DiscreteAutoencoder:
    params = dict(n_codes=16, latent="grid", grid=(2, 2), epochs=1, batch_size=32)
    params.update(kw)
    if model == "rvq":
        params.setdefault("quantizer_options", {"levels": 3})
    torch.set_num_threads(1)
    return DiscreteAutoencoder(model=model, device="cpu", random_state=seed, **params).fit(x)


@pytest.fixture(scope="module")
def rvq(digits, tmp_path_factory) -> tuple[Path, DiscreteAutoencoder]:
    """A 2x2-grid residual model (3 levels of 16 codes) with its prior, saved."""
    est = fit(digits[:N_TRAIN])
    path = tmp_path_factory.mktemp("codec") / "rvq.safetensors"
    est.save(path)
    save_prior(path, fit_prior(est, digits[:N_TRAIN]))
    return path, est


@pytest.fixture(scope="module")
def codec(rvq) -> Codec:
    return load_codec(rvq[0], device="cpu")


@pytest.fixture(scope="module")
def small_archive(codec, digits) -> bytes:
    """An archive of 3 images, small enough to fuzz exhaustively."""
    return codec.encode_codes(codec.est.transform(digits[-3:]), names=["a.png", "b", "c/d.jpg"])


# ----------------------------------------------------------------------- round trips
@pytest.mark.parametrize(
    "model,kw",
    [
        ("vq", {}),
        ("binary", {"n_bits": 5}),
        ("gumbel", {"latent": "global", "grid": None, "quantizer_options": {"groups": 2}}),
    ],
)
def test_round_trip_every_model_kind(digits, model, kw):
    est = fit(digits[:200], model=model, **kw)
    c = Codec(est, fit_prior(est, digits[:200]))
    codes = est.transform(digits[200:500])
    sym, names, header = c.decode_archive(c.encode_codes(codes))
    assert names is None and header.n_images == 300
    np.testing.assert_array_equal(c.to_codes(sym), codes)


@pytest.mark.parametrize("native", [False, True])
def test_codes_decode_in_bfloat16_where_native_and_refinements_hold(
    codec, digits, monkeypatch, native
):
    from discretae.compression import codec as codec_module

    monkeypatch.setattr(codec_module, "native_bf16_cpu", lambda: native)
    x = digits[N_TRAIN : N_TRAIN + 200]
    sym = codec.encode_images(torch.from_numpy(x).float() / 255)
    fast, base = codec.decode_images(sym), codec.base_images(sym)
    # bfloat16 moves a few pixels by a step or two; float32 is the base itself
    moved = np.abs(fast.astype(int) - base)
    assert (moved.max() > 0) == native and moved.max() <= 8
    images, _, _ = codec.decompress(codec.encode_codes(codec.to_codes(sym)))
    np.testing.assert_array_equal(images, fast)
    for e in (0, 3):  # refinements are coded against the float32 base: the bound holds
        data = codec.encode_with_refinement(x, max_error=e)
        images, _, _ = codec.decompress(data)
        assert np.abs(images.astype(int) - x).max() <= e


def test_round_trip_every_level_prefix(codec, digits):
    codes = codec.est.transform(digits[N_TRAIN:])
    sizes = []
    for levels in (1, 2, 3):
        data = codec.encode_codes(codes, levels=levels)
        sym, _, header = codec.decode_archive(data)
        assert header.levels == levels
        np.testing.assert_array_equal(sym, codes[..., :levels])
        sizes.append(len(data))
        images = codec.decode_images(sym[:5])
        assert images.shape == (5, 1, 8, 8) and images.dtype == np.uint8
    assert sizes[0] < sizes[1] < sizes[2]


def test_blocks_and_names_round_trip(codec, digits, monkeypatch):
    monkeypatch.setattr("discretae.compression.codec.BLOCK", 64)
    codes = codec.est.transform(digits[:200])
    names = [f"img{i}.png" for i in range(200)]
    data = codec.encode_codes(codes, names=names)
    header, got_names, blocks = parse_archive(data)
    assert header.block == 64 and len(blocks) == 4 and got_names == names
    sym, _, _ = codec.decode_archive(data)
    np.testing.assert_array_equal(codec.to_codes(sym), codes)


def test_prior_beats_fixed_width_and_is_bounded(codec, rvq, digits):
    """The fitted prior makes smaller archives than the uniform one, and its tables keep
    every probability at or below P_MAX (the bound the decoder's checks rely on)."""
    codes = codec.est.transform(digits[N_TRAIN:])
    fitted = codec.measure(codes)
    uniform = Codec(codec.est).measure(codes)
    assert uniform["prior"] == "uniform" and fitted["prior"] == "context"
    assert fitted["archive_bytes"] < 0.9 * uniform["archive_bytes"]
    # the uniform prior costs log2(16) = 4 bits per symbol, plus the coder's last words
    n_sym = codes.size
    assert 4 * n_sym / 8 <= uniform["payload_bytes"] <= 4 * n_sym / 8 + 8
    t = codec.prior.table.astype(np.float64)
    assert (t.max(1) / t.sum(1)).max() <= P_MAX
    assert codec.prior.cost_bits(codec.symbols(codes)) >= MIN_BITS_PER_SYMBOL * n_sym


def test_prior_survives_the_model_file(rvq, codec, tmp_path):
    assert load_prior(rvq[0]).digest() == codec.prior.digest()
    rvq[1].save(tmp_path / "bare.safetensors")
    assert load_prior(tmp_path / "bare.safetensors") is None
    # the file with a prior still loads as a plain model
    est = DiscreteAutoencoder.load(rvq[0], device="cpu")
    assert est.code_shape_ == (2, 2, 3)


# ----------------------------------------------------------------------- sizes
def test_archive_file_size_is_what_measure_reports(rvq, codec, digits, tmp_path):
    np.save(tmp_path / "x.npy", digits[N_TRAIN:, 0])
    result = compress(str(tmp_path / "x.npy"), model=rvq[0], out=tmp_path / "a.dae", device="cpu")
    size = (tmp_path / "a.dae").stat().st_size
    measured = codec.measure(codec.est.transform(digits[N_TRAIN:]))
    assert result["archive_bytes"] == size == measured["archive_bytes"]
    assert result["bytes_per_image"] == pytest.approx(size / (len(digits) - N_TRAIN))
    assert measured["header_bytes"] + measured["payload_bytes"] == size


# ----------------------------------------------------------------------- refusals
def test_other_model_or_prior_is_refused(rvq, codec, digits, small_archive):
    other = fit(digits[:N_TRAIN], seed=1)
    with pytest.raises(DiscretaeError, match="different model"):
        Codec(other, fit_prior(other, digits[:N_TRAIN])).decode_archive(small_archive)
    with pytest.raises(DiscretaeError, match="different model"):
        Codec(codec.est).decode_archive(small_archive)  # same network, uniform prior
    with pytest.raises(DiscretaeError, match="different model"):
        Codec(codec.est, fit_prior(codec.est, digits[:100])).decode_archive(small_archive)


def test_future_version_is_refused(codec, small_archive):
    data = bytearray(small_archive)
    data[len(MAGIC)] = FORMAT_VERSION + 1
    with pytest.raises(DiscretaeError, match=f"format version {FORMAT_VERSION + 1}.*upgrade"):
        codec.decode_archive(bytes(data))


def with_crc(body: bytes) -> bytes:
    return body + zlib.crc32(body).to_bytes(4, "little")


def test_header_counts_are_bounded_before_decoding(codec, digits):
    """A header that claims far more images than its payload can hold (with a valid
    checksum) is refused at once, without allocating or decoding."""
    data = codec.encode_codes(codec.est.transform(digits[:10]))
    body = bytearray(data[:-4])
    start = len(MAGIC) + 2 + 16
    assert body[start] == 10  # n_images is the first varint
    body[start : start + 1] = bytes([0xFF, 0xFF, 0xFF, 0x7F])  # 2**28 - 1 images
    t = time.perf_counter()
    with pytest.raises(DiscretaeError, match="corrupt archive"):
        codec.decode_archive(with_crc(bytes(body)))
    assert time.perf_counter() - t < 1.0


def test_unsafe_names_are_refused(rvq, codec, digits, tmp_path):
    for bad in ("../evil.png", "/etc/x", "a/../../b", "a\\b"):
        data = codec.encode_codes(codec.est.transform(digits[:1]), names=[bad])
        (tmp_path / "a.dae").write_bytes(data)
        with pytest.raises(DiscretaeError, match="unsafe file name"):
            decompress(tmp_path / "a.dae", model=rvq[0], out=tmp_path / "rec", device="cpu")
        assert not (tmp_path / "rec").exists() and list(tmp_path.glob(".rec*")) == []
    assert not (tmp_path.parent / "evil.png").exists()


# ----------------------------------------------------------------------- fuzzing
def decode_or_error(codec: Codec, data: bytes) -> bool:
    """True when decoding succeeded, False on DiscretaeError; anything else fails."""
    try:
        codec.decode_archive(data)
    except DiscretaeError:
        return False
    return True


def test_fuzz_random_bytes(codec):
    rng = np.random.default_rng(0)
    for n in list(range(0, 40)) + list(rng.integers(40, 4000, 60)):
        data = rng.integers(0, 256, int(n), dtype=np.uint8).tobytes()
        assert not decode_or_error(codec, data)
        assert not decode_or_error(codec, MAGIC + bytes([1]) + data)


def test_fuzz_every_truncation(codec, small_archive):
    for n in range(len(small_archive)):
        assert not decode_or_error(codec, small_archive[:n])
    assert decode_or_error(codec, small_archive)
    assert not decode_or_error(codec, small_archive + b"\0")


def test_fuzz_every_single_bit_flip(codec, small_archive):
    for i in range(8 * len(small_archive)):
        data = bytearray(small_archive)
        data[i // 8] ^= 1 << (i % 8)
        assert not decode_or_error(codec, bytes(data)), f"bit {i} flipped went unnoticed"


def test_fuzz_past_the_checksum(codec, small_archive):
    """Mutations with a recomputed checksum (a crafted file) may decode to other codes,
    but end in DiscretaeError or in codes of the right shape, and quickly."""
    rng = np.random.default_rng(1)
    body = small_archive[:-4]
    outcomes = set()
    for _ in range(400):
        data = bytearray(body)
        for _ in range(int(rng.integers(1, 4))):
            data[int(rng.integers(len(MAGIC) + 2, len(data)))] = int(rng.integers(256))
        t = time.perf_counter()
        try:
            sym, _, header = codec.decode_archive(with_crc(bytes(data)))
            assert sym.shape == (header.n_images, 2, 2, header.levels)
            assert sym.min() >= 0 and sym.max() < codec.n_codes
            outcomes.add("decoded")
        except DiscretaeError:
            outcomes.add("error")
        assert time.perf_counter() - t < 1.0
    assert "error" in outcomes


def test_garbage_payload_behind_a_valid_checksum(codec, small_archive):
    header, names, blocks = parse_archive(small_archive)
    rng = np.random.default_rng(2)
    for _ in range(50):
        words = rng.integers(0, 2**32, len(blocks[0]), dtype=np.uint32)
        try:
            sym = codec.prior.decode_block(words, header.n_images, header.levels)
            assert sym.shape == (header.n_images, 2, 2, header.levels)
        except DiscretaeError:
            pass


# ----------------------------------------------------------------------- commands, CLI
def ok(r):
    assert r.exit_code == 0, f"exit {r.exit_code}\n{r.stdout}\n{r.stderr}"
    return r


def failure_line(r) -> str:
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    return lines[0]


def png_folder(root: Path, images: np.ndarray) -> Path:
    for i, im in enumerate(images):
        (root / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(im[0]).save(root / f"c{i % 2}" / f"im{i}.png")
    return root


def test_cli_compress_decompress_folder_with_names(rvq, codec, digits, tmp_path):
    src = png_folder(tmp_path / "data", digits[:12])
    archive, rec = tmp_path / "a.dae", tmp_path / "rec"
    r = ok(runner.invoke(app, ["compress", str(src), "-m", str(rvq[0]), "-o", str(archive),
                               "--device", "cpu", "--json"]))  # fmt: skip
    assert '"names": true' in r.stdout
    codes = tmp_path / "codes.npy"
    ok(runner.invoke(app, ["decompress", str(archive), "-m", str(rvq[0]), "-o", str(rec),
                           "--codes", str(codes), "--device", "cpu", "-q"]))  # fmt: skip
    files = sorted(p.relative_to(rec).as_posix() for p in rec.rglob("*.png"))
    assert files == sorted(f"c{i % 2}/im{i}.png" for i in range(12))
    x = load_dataset(str(src)).to_array()
    np.testing.assert_array_equal(np.load(codes), codec.est.transform(x))
    first = np.asarray(Image.open(rec / "c0" / "im0.png"))
    sym = codec.encode_images(torch.from_numpy(x[:1]))
    np.testing.assert_array_equal(first, codec.decode_images(sym)[0, 0])


def test_cli_levels_and_montage(rvq, digits, tmp_path):
    np.save(tmp_path / "x.npy", digits[:50, 0])
    sizes = []
    for levels in ("1", "3"):
        out = tmp_path / f"l{levels}.dae"
        ok(runner.invoke(app, ["compress", str(tmp_path / "x.npy"), "-m", str(rvq[0]), "-o",
                               str(out), "--levels", levels, "--device", "cpu", "-q"]))  # fmt: skip
        sizes.append(out.stat().st_size)
    assert sizes[0] < sizes[1]
    ok(runner.invoke(app, ["decompress", str(tmp_path / "l1.dae"), "-m", str(rvq[0]), "-o",
                           str(tmp_path / "grid.png"), "--device", "cpu", "-q"]))  # fmt: skip
    assert Image.open(tmp_path / "grid.png").size[0] > 8
    l4 = tmp_path / "l4.dae"
    r = runner.invoke(app, ["compress", str(tmp_path / "x.npy"), "-m", str(rvq[0]), "-o",
                            str(l4), "--levels", "4", "--device", "cpu"])  # fmt: skip
    assert "levels=4" in failure_line(r) and not l4.exists()


def test_cli_bad_archives_fail_cleanly(rvq, digits, small_archive, tmp_path):
    other = tmp_path / "other.safetensors"
    fit(digits[:N_TRAIN], seed=3).save(other)
    good = tmp_path / "good.dae"
    good.write_bytes(small_archive)
    future = bytearray(small_archive)
    future[len(MAGIC)] = FORMAT_VERSION + 1
    cases = {
        "truncated": (small_archive[: len(small_archive) // 2], rvq[0], "truncated"),
        "flipped": (small_archive[:30] + bytes([small_archive[30] ^ 4]) + small_archive[31:],
                    rvq[0], "corrupt"),
        "future": (bytes(future), rvq[0], "upgrade"),
        "foreign": (b"PK\x03\x04 not an archive", rvq[0], "not a discretae archive"),
        "wrong model": (small_archive, other, "different model"),
    }  # fmt: skip
    for name, (data, model, message) in cases.items():
        archive = tmp_path / f"{name}.dae"
        archive.write_bytes(data)
        rec = tmp_path / f"rec-{name.replace(' ', '-')}"
        r = runner.invoke(app, ["decompress", str(archive), "-m", str(model), "-o", str(rec),
                                "--codes", str(tmp_path / "c.npy"), "--device", "cpu"])  # fmt: skip
        assert message in failure_line(r), name
        assert not rec.exists() and not (tmp_path / "c.npy").exists(), name
        assert [p.name for p in tmp_path.glob(".rec*")] == [], name


def test_model_without_prior_uses_uniform_with_a_warning(rvq, digits, tmp_path):
    bare = tmp_path / "bare.safetensors"
    rvq[1].save(bare)
    np.save(tmp_path / "x.npy", digits[:20, 0])
    r = ok(runner.invoke(app, ["compress", str(tmp_path / "x.npy"), "-m", str(bare), "-o",
                               str(tmp_path / "u.dae"), "--device", "cpu", "--json"]))  # fmt: skip
    assert "no code prior" in r.stderr and '"prior": "uniform"' in r.stdout
    r = runner.invoke(app, ["decompress", str(tmp_path / "u.dae"), "-m", str(rvq[0]), "-o",
                            str(tmp_path / "rec"), "--device", "cpu"])  # fmt: skip
    assert "different model" in failure_line(r)


def test_subprocess_compress_decompress(digits, tmp_path):
    """The installed console script end to end: fit a tiny grid model (1 epoch), attach a
    prior, compress, decompress."""
    exe = shutil.which("discretae")
    cmd = [exe] if exe else [sys.executable, "-m", "discretae.cli"]
    np.save(tmp_path / "x.npy", digits[:200, 0])
    model = tmp_path / "m.safetensors"

    def run(*args):
        r = subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        return r

    run("fit", tmp_path / "x.npy", "--model", "vq", "--latent", "grid", "--grid", "2x2",
        "--codes", "8", "--epochs", "1", "--device", "cpu", "--out", model, "-q")  # fmt: skip
    est = DiscreteAutoencoder.load(model, device="cpu")
    save_prior(model, fit_prior(est, digits[:200]))
    run("compress", tmp_path / "x.npy", "-m", model, "-o", tmp_path / "a.dae", "-q")
    run("decompress", tmp_path / "a.dae", "-m", model, "-o", tmp_path / "rec", "-q")
    assert len(list((tmp_path / "rec").glob("*.png"))) == 200
    # the fit stored a refinement table: --max-error 0 gives back every pixel
    run("compress", tmp_path / "x.npy", "-m", model, "-o", tmp_path / "l.dae", "-e", "0", "-q")
    run("decompress", tmp_path / "l.dae", "-m", model, "-o", tmp_path / "lossless", "-q")
    back = [np.asarray(Image.open(tmp_path / "lossless" / f"{i:06d}.png")) for i in range(200)]
    np.testing.assert_array_equal(np.stack(back), digits[:200, 0])
    r2 = tmp_path / "r2"
    bad = [*cmd, "decompress", str(tmp_path / "x.npy"), "-m", str(model), "-o", str(r2)]
    r = subprocess.run(bad, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and r.stderr.startswith("error: not a discretae archive")
    assert "Traceback" not in r.stderr and not r2.exists()
