"""The learned code prior: it learns, its integer inference is exact and independent of
the batch, archives round-trip, stored priors are checked, and the CLI fits one."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from _small_models import fit_small
from PIL import Image

from discretae.compression import learned_prior as lp
from discretae.compression import prior_network as pn
from discretae.compression.codec import Codec, load_prior, save_prior
from discretae.compression.fitting import fit_prior
from discretae.compression.learned_prior import LearnedPrior, bits_per_symbol
from discretae.compression.prior import CodePrior, quantize_rows
from discretae.core.errors import DiscretaeError
from discretae.data.datasets import load_dataset

A = 16


def structured_codes(n: int, seed: int = 0, grid=(5, 5), levels: int = 2) -> np.ndarray:
    """Codes with spatial structure a causal model can learn: each level-0 code is the
    left code plus the upper one (mod A) with noise, each level-1 code a function of the
    cell's level-0 code and its left neighbour's level 1."""
    rng = np.random.default_rng(seed)
    h, w = grid
    sym = np.zeros((n, h, w, levels), dtype=np.int64)
    for i in range(h):
        for j in range(w):
            left = sym[:, i, j - 1, 0] if j else rng.integers(0, A, n)
            up = sym[:, i - 1, j, 0] if i else rng.integers(0, A, n)
            noise = rng.integers(-1, 2, n) * (rng.random(n) < 0.3)
            sym[:, i, j, 0] = (left + up + noise) % A
            if levels > 1:
                prev = sym[:, i, j - 1, 1] if j else np.zeros(n, dtype=np.int64)
                sym[:, i, j, 1] = (3 * sym[:, i, j, 0] + prev + (rng.random(n) < 0.2)) % A
    return sym


@pytest.fixture(scope="module")
def train() -> np.ndarray:
    return structured_codes(600)


@pytest.fixture(scope="module")
def prior(train) -> LearnedPrior:
    torch.set_num_threads(1)
    return LearnedPrior.fit(train, A, steps=250)


def test_it_learns_what_the_codes_hold(prior):
    test = structured_codes(200, seed=1)
    bits = bits_per_symbol(prior, test)
    # uniform: 4 bits; the true conditional entropy is about 1 bit per symbol
    assert bits[0] < 2.5 and bits[1] < 2.5, bits


def reference_weights(net, ctx, pos) -> np.ndarray:
    """The integer network in Python integers, one row at a time, without float32."""
    a = net.a
    out = []
    for row, p in zip(ctx.tolist(), pos.tolist(), strict=True):
        x = [int(v) for c, code in enumerate(row) for v in a["embed"][net.col_offset[c] + code]]
        acc = [
            int(a["pos1"][p, u]) + sum(x[k] * int(a["w1"][u, k]) for k in range(len(x)))
            for u in range(pn.HIDDEN)
        ]

        def rescale(values, mult):
            return [
                (v * int(m) + (1 << (pn.SHIFT - 1))) >> pn.SHIFT
                for v, m in zip(values, mult, strict=True)
            ]

        a1 = [min(255, max(0, v)) for v in rescale(acc, a["m1"])]
        acc = [
            int(a["b2"][u]) + sum(a1[k] * int(a["w2"][u, k]) for k in range(pn.HIDDEN))
            for u in range(pn.HIDDEN)
        ]
        a2 = [min(255, max(0, v)) for v in rescale(acc, a["m2"])]
        acc = [
            int(a["b3"][s]) + sum(a2[k] * int(a["w3"][s, k]) for k in range(pn.HIDDEN))
            for s in range(len(a["b3"]))
        ]
        logits = rescale(acc, a["m3"])
        top = max(logits)
        out.append([int(a["exp"][min(top - v, pn.EXP_TABLE - 1)]) for v in logits])
    return np.array(out, dtype=np.int64)


def test_integer_inference_matches_python_integers(prior, train):
    for t in range(2):
        ctx = pn.all_contexts(train[:3], A, t).reshape(-1, len(pn.columns(t)))[:20]
        pos = np.tile(np.arange(25), 3)[:20]
        got = prior.nets[t].weights(ctx, pos)
        np.testing.assert_array_equal(got, reference_weights(prior.nets[t], ctx, pos))


def test_coder_rows_are_the_context_priors_quantization():
    rng = np.random.default_rng(0)
    v = np.floor(pn.EXP_SCALE * np.exp(-rng.exponential(3.0, (200, A)) * 4))
    v[:, 0] = pn.EXP_SCALE
    v[:50, 1:] = 0  # rows that put (almost) everything on one code
    np.testing.assert_array_equal(pn.coder_rows(v), quantize_rows(v / v.sum(1, keepdims=True)))


def test_the_bounds_that_make_float32_products_exact():
    widest = max(len(pn.columns(t)) for t in range(32))
    assert pn.HIDDEN * 255 * 128 < 2**24  # dense layers: every partial sum an integer < 2**24
    assert widest * pn.EMBED * 128 * 128 < 2**24  # layer one: float32 sums of table rows
    assert (pn.BIAS_LIMIT + pn.HIDDEN * 255 * 128) * pn.MULT_LIMIT < 2**53  # float64 exact


def test_rows_do_not_depend_on_the_batch(prior, train):
    codes = train[:50]
    whole = prior._all_rows(codes)
    for t in range(2):
        for part in (codes[:1], codes[7:20]):
            start = 0 if len(part) == 1 else 7
            rows = prior._all_rows(part)[t]
            np.testing.assert_array_equal(rows, whole[t][start : start + len(part)])


@pytest.mark.parametrize("levels", [1, 2])
def test_blocks_round_trip(prior, levels):
    codes = structured_codes(40, seed=2)[..., :levels]
    words = prior.encode_block(codes)
    np.testing.assert_array_equal(prior.decode_block(words, len(codes), levels), codes)
    assert abs(32 * len(words) - prior.cost_bits(codes)) < 64 + 0.01 * prior.cost_bits(codes)


def test_storage_round_trip_and_refusals(prior):
    tensors, config = prior.to_tensors(), prior.config()
    again = LearnedPrior.from_tensors(tensors, config)
    assert again.digest() == prior.digest()
    codes = structured_codes(10, seed=3)
    np.testing.assert_array_equal(again.encode_block(codes), prior.encode_block(codes))
    changed = dict(tensors)
    changed["0.w2"] = tensors["0.w2"].clone()
    changed["0.w2"][0, 0] += 1
    with pytest.raises(DiscretaeError, match="sha256"):
        LearnedPrior.from_tensors(changed, config)
    wrong = {**tensors, "1.m2": tensors["1.m2"].to(torch.int32)}
    with pytest.raises(DiscretaeError, match="m2"):
        LearnedPrior.from_tensors(wrong, config)
    huge = {**tensors, "0.m1": tensors["0.m1"] * 0 + 2**22}
    with pytest.raises(DiscretaeError, match="out of range"):
        LearnedPrior.from_tensors(huge, config)
    with pytest.raises(DiscretaeError, match="corrupt"):
        LearnedPrior.from_tensors({k: v for k, v in tensors.items() if k != "exp"}, config)
    with pytest.raises(DiscretaeError, match="sizes"):
        LearnedPrior.from_tensors(tensors, {**config, "hidden": 64})


def test_random_words_decode_or_fail_cleanly(prior):
    rng = np.random.default_rng(0)
    for n_words in (0, 1, 3, 20):
        for _ in range(5):
            words = rng.integers(0, 2**32, n_words, dtype=np.uint64).astype(np.uint32)
            try:
                codes = prior.decode_block(words, 4, 2)
            except DiscretaeError:
                continue
            assert codes.shape == (4, 5, 5, 2) and codes.min() >= 0 and codes.max() < A


# ---------------------------------------------------------------- with an image model
@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return np.rint(load_dataset("digits").to_array() * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def est(digits):
    return fit_small(digits[:400], "rvq", n_codes=32, epochs=2)


def test_codec_with_a_learned_prior(est, digits, tmp_path):
    path = tmp_path / "m.safetensors"
    est.save(path)
    learned = fit_prior(est, digits[:400], kind="learned")
    assert learned.choice == {"kind": "learned", "rule": "learned"}
    save_prior(path, learned)
    loaded = load_prior(path)
    assert isinstance(loaded, LearnedPrior) and loaded.digest() == learned.digest()
    codec = Codec(est, loaded)
    x = torch.as_tensor(digits[400:460]).float() / 255
    sym = codec.encode_images(x)
    data = codec.encode_codes(codec.to_codes(sym))
    images, _, _ = codec.decompress(data)
    np.testing.assert_array_equal(images, codec.decode_images(sym))
    rated = Codec(est, loaded, rate_weight=5.0)
    cheaper = rated.encode_codes(rated.to_codes(rated.encode_images(x)))
    assert len(cheaper) < len(data)
    assert len(rated.decompress(cheaper)[0]) == 60


def test_auto_scores_both_priors_on_held_out_images(est, digits):
    prior = fit_prior(est, digits[:400], kind="auto")
    choice = prior.choice
    assert choice["held_out_images"] == 40
    held = choice["held_out_bits_per_image"]
    assert choice["kind"] == min(held, key=held.get)
    assert isinstance(prior, LearnedPrior if choice["kind"] == "learned" else CodePrior)
    few = fit_prior(est, digits[:100], kind="auto")
    assert isinstance(few, CodePrior) and few.choice["kind"] == "context"
    with pytest.raises(DiscretaeError, match="prior must be one of"):
        fit_prior(est, digits[:100], kind="neural")


def test_cli_fits_a_learned_prior_and_compresses(digits, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for k, img in enumerate(digits[:240]):
        Image.fromarray(img[0]).save(folder / f"{k:03d}.png")
    model, archive, out = tmp_path / "m.safetensors", tmp_path / "a.dae", tmp_path / "back"
    cli = [sys.executable, "-m", "discretae.cli"]
    fit = [*cli, "fit", str(folder), "--model", "rvq", "--latent", "grid", "--codes", "16"]
    run = subprocess.run(
        [*fit, "--epochs", "1", "--prior", "learned", "--out", str(model), "--json"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert '"kind": "learned"' in run.stdout
    assert isinstance(load_prior(model), LearnedPrior)
    for args in (
        ["compress", str(folder), "--model", str(model), "--out", str(archive), "--json"],
        ["decompress", str(archive), "--model", str(model), "--out", str(out)],
    ):
        run = subprocess.run([*cli, *args], capture_output=True, text=True, check=False)
        assert run.returncode == 0, run.stderr
        assert args[0] == "decompress" or '"prior": "learned"' in run.stdout
    assert len(list(out.rglob("*.png"))) == 240
    bad = subprocess.run(
        [*fit, "--prior", "neural", "--out", str(tmp_path / "x.safetensors")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert bad.returncode == 2 and "neural" in bad.stderr


def test_large_code_sets_train_on_a_seeded_draw_of_images(train, monkeypatch):
    monkeypatch.setattr(lp, "MAX_SYMBOLS", 25 * 100)  # 100 of the 600 images
    seen = []

    def counted(sym, n_codes, t):
        seen.append(len(sym))
        return pn.all_contexts(sym, n_codes, t)

    monkeypatch.setattr(lp, "all_contexts", counted)
    one = LearnedPrior.fit(train, A, steps=3)
    two = LearnedPrior.fit(train, A, steps=3)
    assert seen == [100, 100, 100, 100] and one.digest() == two.digest()
    with pytest.raises(DiscretaeError, match="at least 2 codes"):
        LearnedPrior.fit(np.zeros((4, 2, 2, 1), dtype=np.int64), 1)
