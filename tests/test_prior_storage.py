"""The code prior in a model file: stored as sparse counts, rebuilt into the same tables.

Model files written before stored the dense uint16 tables (``prior.table``); ``dense``
below writes that layout as the old code did, so those files stay covered. Archives made
with either layout of one fitted prior are byte-identical, and a corrupt stored prior
is refused with one DiscretaeError.
"""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest
import torch

from discretae.commands.common import load_codec
from discretae.compression.codec import PRIOR_KEY, load_prior, save_prior
from discretae.compression.fitting import fit_prior
from discretae.compression.prior import CodePrior
from discretae.compression.prior_storage import (
    pack_sparse,
    read_varints,
    small_int_tensor,
    unpack_sparse,
    varint_bytes,
)
from discretae.core.errors import DiscretaeError
from discretae.core.serialization import read_model_file, write_model_file
from discretae.data.datasets import load_dataset
from discretae.estimator.discrete_autoencoder import DiscreteAutoencoder


def dense(prior: CodePrior) -> dict[str, torch.Tensor]:
    """The layout model files had before the counts were stored: the uint16 table as
    int16 bits and the class maps as int32."""
    return {
        "table": torch.from_numpy(prior.table.astype(np.uint16).view(np.int16)),
        "class_maps": torch.from_numpy(prior.class_maps.astype(np.int32)),
    }


def structured_codes(n, h, w, levels, a, seed=0) -> np.ndarray:
    """Codes with neighbour and level structure, skewed towards small values."""
    rng = np.random.default_rng(seed)
    base = (rng.random((n, h, w)) ** 2 * a).astype(np.int64)
    base[:, :, 1:] = np.where(rng.random((n, h, w - 1)) < 0.5, base[:, :, :-1], base[:, :, 1:])
    out = [base]
    for _ in range(1, levels):
        out.append((out[-1] * 7 + rng.integers(0, 3, (n, h, w))) % a)
    return np.stack(out, -1)


@pytest.fixture(scope="module")
def prior() -> CodePrior:
    codes = structured_codes(400, 3, 4, 3, 32)
    vectors = [np.random.default_rng(t).normal(size=(32, 4)) for t in range(3)]
    return CodePrior.fit(codes, 32, vectors)


# ----------------------------------------------------------------------- varints
def test_varints_round_trip_and_refuse_malformed_streams():
    values = np.array([0, 1, 127, 128, 300, 16383, 16384, 2**35 + 5, 2**49 - 1])
    data = varint_bytes(values)
    assert data.dtype == np.uint8 and len(data) == 1 + 1 + 1 + 2 + 2 + 2 + 3 + 6 + 7
    assert np.array_equal(read_varints(data), values)
    assert len(read_varints(varint_bytes(np.zeros(0)))) == 0
    with pytest.raises(ValueError, match="ends inside"):
        read_varints(np.array([5, 0x80], dtype=np.uint8))
    with pytest.raises(ValueError, match="longer"):
        read_varints(np.array([0xFF] * 7 + [1], dtype=np.uint8))
    with pytest.raises(ValueError, match="non-canonical"):
        read_varints(np.array([0x81, 0x00], dtype=np.uint8))
    with pytest.raises(ValueError):
        varint_bytes(np.array([-1]))


def test_sparse_counts_round_trip_and_bounds():
    counts = np.zeros((5, 7), dtype=np.int64)
    counts[0, 0], counts[2, 3], counts[4, 6] = 3, 200, 1
    packed = pack_sparse(counts)
    assert np.array_equal(unpack_sparse(packed["gaps"], packed["values"], (5, 7)), counts)
    with pytest.raises(ValueError, match="out of range"):  # the last index is 34
        unpack_sparse(packed["gaps"], packed["values"], (5, 6))
    fewer = pack_sparse(counts[:4])  # one nonzero count fewer
    with pytest.raises(ValueError, match="3 count positions but 2 counts"):
        unpack_sparse(packed["gaps"], fewer["values"], (5, 7))
    # the streams are zlib: truncated, followed by junk, not zlib, or inflating past what
    # the array could need (a zlib bomb) are refused
    bomb = torch.frombuffer(bytearray(zlib.compress(bytes(10**6), 9)), dtype=torch.uint8)
    for bad in (packed["gaps"][:-1], torch.cat([packed["gaps"], packed["gaps"][:1]]),
                torch.tensor([1, 2, 3], dtype=torch.uint8), bomb):  # fmt: skip
        with pytest.raises(ValueError):
            unpack_sparse(bad, packed["values"], (5, 7))
    with pytest.raises(ValueError, match="uint8"):
        unpack_sparse(packed["gaps"].to(torch.int16), packed["values"], (5, 7))
    assert small_int_tensor(np.array([0, 255])).dtype == torch.uint8
    assert small_int_tensor(np.array([256])).dtype == torch.int16
    assert small_int_tensor(np.array([2**15])).dtype == torch.int32


# ----------------------------------------------------------------------- exact rebuild
def test_counts_rebuild_the_identical_tables(prior):
    tensors = prior.to_tensors()
    assert "table" not in tensors and tensors["class_maps"].dtype == torch.uint8
    loaded = CodePrior.from_tensors(tensors, prior.config())
    assert loaded.table.dtype == np.uint16 and np.array_equal(loaded.table, prior.table)
    assert np.array_equal(loaded.class_maps, prior.class_maps)
    assert np.array_equal(loaded.counts, prior.counts)
    assert loaded.digest() == prior.digest()
    # the counts are much smaller than the table they make
    stored = sum(t.numel() * t.element_size() for t in tensors.values())
    assert stored < prior.table.nbytes / 4


def test_dense_tables_of_older_files_still_load(prior):
    loaded = CodePrior.from_tensors(dense(prior), prior.config())
    assert np.array_equal(loaded.table, prior.table) and loaded.digest() == prior.digest()
    assert loaded.counts is None
    # saving such a prior again keeps its dense layout (its counts are unknown)
    again = CodePrior.from_tensors(loaded.to_tensors(), loaded.config())
    assert "table" in loaded.to_tensors() and again.digest() == prior.digest()


def test_uniform_prior_round_trips():
    u = CodePrior.uniform((2, 3), 2, 16)
    loaded = CodePrior.from_tensors(u.to_tensors(), u.config())
    assert loaded.kind == "uniform" and np.array_equal(loaded.table, u.table)


def test_one_level_and_more_classes_than_codes():
    """A 1x1 grid of one level (a global code), and 2 codes (every code its own class)."""
    for codes, a in (
        (structured_codes(50, 1, 1, 1, 10), 10),
        (structured_codes(60, 2, 2, 2, 2), 2),
    ):
        p = CodePrior.fit(codes, a)
        loaded = CodePrior.from_tensors(p.to_tensors(), p.config())
        assert np.array_equal(loaded.table, p.table) and loaded.digest() == p.digest()


# ----------------------------------------------------------------------- corruption
def refused(tensors: dict, config: dict) -> bool:
    try:
        CodePrior.from_tensors(tensors, config)
    except DiscretaeError as e:
        assert "code prior" in str(e)
        return True
    return False


def test_every_corrupt_byte_of_the_stored_prior_is_refused(prior):
    """A flipped bit anywhere in the stored tensors, a truncated or extended stream, or a
    missing tensor: one DiscretaeError each, never a crash or a silently other prior."""
    good, config = prior.to_tensors(), prior.config()
    rng = np.random.default_rng(0)
    tried = 0
    for name, t in good.items():
        raw = t.numpy()
        flat = raw.view(np.uint8).reshape(-1)
        for pos in rng.choice(flat.size, size=min(flat.size, 40), replace=False):
            bad = flat.copy()
            bad[pos] ^= np.uint8(1 << rng.integers(8))
            broken = {**good, name: torch.from_numpy(bad.view(raw.dtype).reshape(raw.shape))}
            assert refused(broken, config), (name, pos)
            tried += 1
        if t.dim() == 1:
            assert refused({**good, name: t[:-1]}, config), name
            assert refused({**good, name: torch.cat([t, t[-1:]])}, config), name
        assert refused({k: v for k, v in good.items() if k != name}, config), name
        assert refused({**good, name: t.to(torch.float32)}, config), name
    assert tried > 100


@pytest.mark.parametrize(
    "change",
    [
        {"kind": "other"},
        {"grid": [4000, 4000]},  # would rebuild a huge table: refused before allocating
        {"grid": [0, 3]},
        {"n_codes": 0},
        {"n_codes": 31},
        {"n_levels": 2},
        {"n_classes": [3, 32, 32]},
        {"n_classes": [-1, 32, 32]},
        {"grid": "3x4"},
    ],
)
def test_inconsistent_config_is_refused(prior, change):
    config = {**prior.config(), **change}
    assert refused(prior.to_tensors(), config)
    if change.get("grid") != [4000, 4000]:  # the dense layout allocates its stored table only
        assert refused(dense(prior), config)


def test_missing_config_keys_are_refused(prior):
    for key in prior.config():
        config = {k: v for k, v in prior.config().items() if k != key}
        assert refused(prior.to_tensors(), config)


def test_counts_a_fit_cannot_make_are_refused(prior):
    """Counts that disagree with their sha256, and counts that could not come from
    training codes (positions counted different numbers of times)."""
    counts = prior.counts.copy()
    counts[0, 0] += 1
    tensors = {**prior.to_tensors(), **{f"counts.{k}": v for k, v in pack_sparse(counts).items()}}
    assert refused(tensors, prior.config())
    # a prior of consistent counts (every position and level counted equally) whose
    # sha256 matches still loads; one off that is refused before its sha256 is compared
    p = CodePrior.fit(structured_codes(40, 2, 2, 2, 8), 8)
    assert not refused(p.to_tensors(), p.config())
    counts = p.counts.copy()
    counts[-1, 0] += 1
    p_bad = CodePrior(p.grid, p.n_levels, p.n_codes, p.kind, p.n_classes, p.class_maps,
                      p.table, counts)  # fmt: skip
    with pytest.raises(DiscretaeError, match="levels hold different numbers"):
        CodePrior.from_tensors(p_bad.to_tensors(), p.config())


# ----------------------------------------------------------------------- model files
@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    """One tiny rvq model on digits, saved twice: its prior as counts (what save_prior
    writes now) and as the dense tables (what it wrote before)."""
    x = np.rint(load_dataset("digits").to_array()[:300] * 255).astype(np.uint8)
    torch.set_num_threads(1)
    est = DiscreteAutoencoder(
        model="rvq", n_codes=16, latent="grid", grid=(2, 2), epochs=1, batch_size=32,
        device="cpu", random_state=0, quantizer_options={"levels": 3},
    ).fit(x)  # fmt: skip
    folder = tmp_path_factory.mktemp("prior-files")
    new, old = folder / "counts.safetensors", folder / "dense.safetensors"
    est.save(new)
    prior = fit_prior(est, x)
    save_prior(new, prior)
    tensors, config = read_model_file(new)
    tensors = {k: v for k, v in tensors.items() if not k.startswith("prior.")}
    tensors.update({f"prior.{k}": v for k, v in dense(prior).items()})
    write_model_file(old, tensors, config)
    return new, old, x


def test_archives_are_byte_identical_with_either_layout(model_files):
    new, old, x = model_files
    assert "prior.table" in read_model_file(old)[0] and "prior.table" not in read_model_file(new)[0]
    assert old.stat().st_size > new.stat().st_size
    c_new, c_old = load_codec(new, device="cpu"), load_codec(old, device="cpu")
    codes = c_new.est.transform(x[:50])
    for levels in (1, 3):
        a = c_new.encode_codes(codes, levels=levels, names=[f"{i}.png" for i in range(50)])
        b = c_old.encode_codes(codes, levels=levels, names=[f"{i}.png" for i in range(50)])
        assert a == b
        sym, names, _ = c_old.decode_archive(a)  # the old file decodes the new archive
        assert np.array_equal(sym, c_new.symbols(codes)[..., :levels]) and names[3] == "3.png"


def test_a_corrupt_prior_in_a_model_file_is_one_error(model_files, tmp_path):
    new, _, _ = model_files
    tensors, config = read_model_file(new)
    values = tensors["prior.counts.values"].clone()
    values[len(values) // 2] ^= 1
    write_model_file(
        tmp_path / "bad.safetensors", {**tensors, "prior.counts.values": values}, config
    )
    with pytest.raises(DiscretaeError, match="code prior is corrupt"):
        load_prior(tmp_path / "bad.safetensors")
    config[PRIOR_KEY] = json.loads(json.dumps(config[PRIOR_KEY]).replace('"context"', '"x"'))
    write_model_file(tmp_path / "bad2.safetensors", tensors, config)
    with pytest.raises(DiscretaeError, match="unknown kind"):
        load_prior(tmp_path / "bad2.safetensors")
