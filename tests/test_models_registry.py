"""The registry of model kinds: build_autoencoder has no branch per kind, so a new kind is
one registered class; the kinds' rules (latent size, style, view objectives) come from it."""

from __future__ import annotations

import pytest
import torch

import discretae
from discretae.core.errors import DiscretaeError
from discretae.models import kinds
from discretae.models.autoencoder import build_autoencoder
from discretae.quantizers import (
    BinaryQuantizer,
    GumbelQuantizer,
    ResidualVectorQuantizer,
    VectorQuantizer,
)


def test_model_kinds_name_their_quantizers_in_order():
    assert list(discretae.MODEL_KINDS) == ["vq", "gumbel", "binary", "rvq"]
    assert discretae.MODEL_KINDS == {
        "vq": VectorQuantizer,
        "gumbel": GumbelQuantizer,
        "binary": BinaryQuantizer,
        "rvq": ResidualVectorQuantizer,
    }
    assert list(kinds.KINDS) == list(discretae.MODEL_KINDS)


def test_an_unknown_kind_lists_the_valid_ones():
    with pytest.raises(DiscretaeError, match="valid kinds: vq, gumbel, binary, rvq$"):
        build_autoencoder("vqq", (1, 8, 8))
    assert issubclass(DiscretaeError, ValueError)


@pytest.mark.parametrize(
    ("kind", "dim", "dtype", "tail"),
    [
        ("vq", 32, torch.int64, ()),
        ("gumbel", 32, torch.int64, ()),
        ("binary", 9, torch.uint8, (9,)),
        ("rvq", 32, torch.int64, (4,)),
    ],
)
def test_each_kind_builds_its_quantizer(kind, dim, dtype, tail):
    torch.manual_seed(0)
    m = build_autoencoder(kind, (1, 8, 8), n_codes=5, n_bits=9)
    assert type(m.quantizer) is discretae.MODEL_KINDS[kind]
    assert m.quantizer.dim == dim and m.code_dtype == dtype and m.code_shape == tail
    codes = m.encode(torch.rand(3, 1, 8, 8))
    assert codes.dtype == dtype and codes.shape == (3, *tail)
    # the config rebuilds the same network: same names, shapes and init under one seed
    torch.manual_seed(0)
    again = build_autoencoder(**m.config)
    a, b = m.state_dict(), again.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_kind_rules_come_from_the_registry():
    with pytest.raises(DiscretaeError, match="a style latent needs a global gumbel or vq"):
        build_autoencoder("binary", (1, 8, 8), style_dim=2)
    with pytest.raises(DiscretaeError, match="view objectives need"):
        build_autoencoder("vq", (1, 8, 8), objectives={"mi": 1.0})
    with pytest.raises(DiscretaeError, match="binary latents have n_bits=4 dims"):
        build_autoencoder("binary", (1, 8, 8), n_bits=4, latent_dim=5)
    m = build_autoencoder("gumbel", (64,), quantizer_options={"groups": 3})
    assert m.quantizer.dim == 33  # 32 rounded up to a multiple of the groups
    assert build_autoencoder("vq", (1, 8, 8), style_dim=2).style_dim == 2


def test_a_new_kind_is_one_registered_class(monkeypatch):
    monkeypatch.setattr(kinds, "KINDS", dict(kinds.KINDS))
    monkeypatch.setattr(kinds, "MODEL_KINDS", dict(kinds.MODEL_KINDS))

    @kinds.register_kind("small-vq")
    class SmallVQ(kinds.VQKind):
        def latent_dim(self, given, n_bits, groups):
            return 4 if given is None else given

    m = build_autoencoder("small-vq", (1, 8, 8), n_codes=3, style_dim=1)
    assert isinstance(m.quantizer, VectorQuantizer) and m.quantizer.dim == 4
    assert kinds.MODEL_KINDS["small-vq"] is VectorQuantizer
    assert m.config["kind"] == "small-vq"
    with pytest.raises(DiscretaeError, match="valid kinds: vq, gumbel, binary, rvq, small-vq"):
        build_autoencoder("nope", (1, 8, 8))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: VectorQuantizer(0, 4), "n_codes must be an integer >= 1, got 0"),
        (lambda: GumbelQuantizer(4, 4, groups=True), "groups must be an integer >= 1, got True"),
        (lambda: BinaryQuantizer(2.0), "n_bits must be an integer >= 1, got 2.0"),
        (lambda: ResidualVectorQuantizer(4, 4, levels=0), "levels must be an integer >= 1"),
        (lambda: discretae.KMeans(0).fit(torch.rand(5, 2)), "n_clusters must be an integer >= 1"),
    ],
)
def test_integer_settings_are_checked_in_one_way(make, message):
    with pytest.raises(DiscretaeError, match=message):
        make()
