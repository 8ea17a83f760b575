"""Archive format 3: code symbols of alphabets above GROUP coded in two stages (group, then
place in the group) after an end mark, and the one-stage archives of formats 1 and 2
still read."""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np
import pytest
import torch

from discretae.compression.ans import (
    GROUP,
    CoderTable,
    decode_slots,
    encode_slots,
    max_ans_symbols,
)
from discretae.compression.archive import MAGIC, pack_archive, parse_archive
from discretae.compression.codec import Codec
from discretae.compression.fitting import fit_prior
from discretae.compression.learned_prior import LearnedPrior
from discretae.compression.prior import quantize_rows
from discretae.core.errors import DiscretaeError
from discretae.data.datasets import load_dataset
from discretae.estimator.discrete_autoencoder import DiscreteAutoencoder

A = 40  # three groups of 16, the last with 8 entries of padding


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return np.rint(load_dataset("digits").to_array() * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def codec(digits) -> Codec:
    torch.set_num_threads(1)
    est = DiscreteAutoencoder(
        model="rvq", n_codes=A, latent="grid", grid=(2, 2), epochs=1, batch_size=32,
        quantizer_options={"levels": 2}, device="cpu", random_state=0,
    ).fit(digits[:400])  # fmt: skip
    return Codec(est, fit_prior(est, digits[:400]))


def one_stage(data: bytes, codec: Codec, x: np.ndarray | None = None) -> bytes:
    """The same archive as formats 1 and 2 wrote it: every symbol in one stage, and a
    refinement of the images x coded by class alone."""
    header, names, blocks = parse_archive(data)
    codes, refine = blocks, None
    if header.max_error is not None:
        cut = [len(b) - r for b, r in zip(blocks, header.refine_words, strict=True)]
        codes = [b[:c] for b, c in zip(blocks, cut, strict=True)]
        sym = codec.decode_archive(data)[0]  # one block
        base = codec.base_images(sym)
        refine = [codec.refinement.encode_block(x, base, sym, header.max_error, modes=False)]
    sizes = header.block_sizes()
    old = [
        codec.prior.encode_block(codec.prior.decode_block(w, n, header.levels), format3=False)
        for w, n in zip(codes, sizes, strict=True)
    ]
    return pack_archive(dataclasses.replace(header, version=1), old, names, refine)


def test_wide_codes_round_trip_in_two_stages_and_old_archives_still_read(codec, digits):
    codes = codec.est.transform(digits[400:])
    assert codes.max() >= GROUP  # the second and third groups are used
    data = codec.encode_codes(codes, names=[f"im{i}" for i in range(len(codes))])
    assert data[len(MAGIC)] == 6
    sym, names, header = codec.decode_archive(data)
    assert header.version == 6 and names[5] == "im5"
    np.testing.assert_array_equal(codec.to_codes(sym), codes)
    old = one_stage(data, codec)
    assert old[len(MAGIC)] == 1 and old != data
    # the integer rows are the same: two stages cost about what one did
    assert abs(len(old) - len(data)) <= 0.01 * len(old) + 16
    images, names_old, header_old = codec.decompress(old)
    assert header_old.version == 1 and names_old == names
    np.testing.assert_array_equal(images, codec.decompress(data)[0])
    # a refined archive: format 2 before, format 5 now
    refined = codec.encode_with_refinement(digits[400:460], max_error=3)
    assert refined[len(MAGIC)] == 6
    old = one_stage(refined, codec, digits[400:460])
    assert old[len(MAGIC)] == 2
    np.testing.assert_array_equal(codec.decompress(old)[0], codec.decompress(refined)[0])
    # a one-stage archive read as two stages does not pass for the codes
    forged = bytearray(old)
    forged[len(MAGIC)] = 3
    body = bytes(forged[:-4])
    forged = body + zlib.crc32(body).to_bytes(4, "little")
    try:
        got, _, _ = codec.decompress(forged)
    except DiscretaeError:
        pass
    else:
        assert not np.array_equal(got, codec.decompress(refined)[0])


@pytest.mark.parametrize("a", [32, A])  # whole groups (a view of the rows), or padded
def test_learned_prior_codes_wide_alphabets_in_two_stages(a):
    rng = np.random.default_rng(0)
    codes = (rng.integers(0, 6, (300, 3, 3, 2)) * 7 + rng.integers(0, 3, (300, 3, 3, 2))) % a
    prior = LearnedPrior.fit(codes, a, steps=40)
    for format3 in (True, False):
        words = prior.encode_block(codes[:50], format3=format3)
        np.testing.assert_array_equal(prior.decode_block(words, 50, 2, format3=format3), codes[:50])
    two, one = prior.encode_block(codes[:50]), prior.encode_block(codes[:50], format3=False)
    assert not np.array_equal(two, one) and abs(len(two) - len(one)) <= 0.02 * len(one) + 4


def test_a_symbol_decoded_into_the_padding_is_refused():
    rng = np.random.default_rng(1)
    n, a = 30, 20  # groups of 16 and 4 (+ 12 of padding)
    rows = rng.integers(1, 50, (n, a)).astype(np.float64)
    wide = np.concatenate([rows, np.zeros((n, 32 - a))], 1)  # the padding, as 32 codes
    sym = np.full((n, 1, 1, 1), 25)  # in the padding of the 20-code table
    words = encode_slots(sym, [((0, 0, 0), (CoderTable(wide), np.arange(n)))])
    with pytest.raises(DiscretaeError, match="past the alphabet"):
        decode_slots(words, [(0, 0, 0)], lambda s: (CoderTable(rows), np.arange(n)),
                     lambda s, v: None)  # fmt: skip
    # the same symbols within the alphabet decode
    sym[:] = 19
    words = encode_slots(sym, [((0, 0, 0), (CoderTable(rows), np.arange(n)))])
    got = []
    decode_slots(words, [(0, 0, 0)], lambda s: (CoderTable(rows), np.arange(n)),
                 lambda s, v: got.append(v))  # fmt: skip
    np.testing.assert_array_equal(got[0], 19)


@pytest.mark.parametrize("top", [0, 17, A - 1])
def test_the_most_likely_symbol_still_costs_its_bound_in_two_stages(top):
    """``max_symbols`` assumes every symbol costs at least MIN_BITS_PER_SYMBOL: a coder
    row whose top entry is at P_MAX (symbol 0, a middle group, the padded last group),
    that symbol coded in two stages after the end mark many times over. Without the
    mark an empty coder's state stays 0 while it codes symbol 0: no words at all."""
    n = 200_000
    rows = quantize_rows(np.eye(1, A, top)).astype(np.float64)
    assert rows[0].argmax() == top
    sym = np.full((n, 1, 1, 1), top)
    words = encode_slots(sym, [((0, 0, 0), (CoderTable(rows), np.zeros(n, dtype=np.int64)))])
    assert n <= max_ans_symbols(len(words))
    one = encode_slots(
        sym, [((0, 0, 0), (CoderTable(rows), np.zeros(n, dtype=np.int64)))], format3=False
    )
    assert (len(one) == 0) == (top == 0)  # formats 1 and 2: symbol 0 cost nothing


def test_a_block_of_zero_codes_decodes(codec):
    """All-zero codes (blank images, say) took no payload words in formats 1 and 2, and the
    decoder's size bound refused the archive as corrupt."""
    zeros = np.zeros((3000, 2, 2, 2), dtype=codec.est.transform(np.zeros((1, 8, 8))).dtype)
    data = codec.encode_codes(zeros)
    sym, _, _ = codec.decode_archive(data)
    np.testing.assert_array_equal(codec.to_codes(sym), zeros)
    with pytest.raises(DiscretaeError, match="cannot be coded in 0 bytes"):
        codec.decode_archive(one_stage(data, codec))
