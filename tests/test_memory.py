"""The memory estimate of a fit (``discretae.models.memory.fit_bytes``).

- with the neighbours objective the estimate grows by the encoder's share for one more
  view (the mined neighbour), which is what autograd really keeps for that view, and by
  the (N, k) int64 neighbour table;
- without it the estimate is what it was: every part the same, no neighbour part.
"""

from __future__ import annotations

import pytest
import torch

from discretae import DiscreteAutoencoder
from discretae.models.autoencoder import build_autoencoder
from discretae.models.memory import (
    BACKWARD_FACTOR,
    activation_bytes_per_image,
    encoder_bytes_per_image,
    fit_bytes,
)
from discretae.models.objectives import OBJECTIVE_DEFAULTS

SHAPE = (1, 16, 16)
BATCH, N = 32, 500


def _model(**objectives):
    torch.manual_seed(0)
    return build_autoencoder("gumbel", SHAPE, objectives=objectives, style_dim=4)


def _saved_bytes(model, x, neighbours=None) -> int:
    """Bytes of the distinct tensors autograd keeps for the backward of a training
    forward pass."""
    seen, total = set(), 0

    def pack(t):
        nonlocal total
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), t.numel())
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x, neighbours)
    return total


def test_neighbours_add_one_encoder_view_and_the_table():
    plain = _model(mi=1.0)
    mining = _model(mi=1.0, neighbours=1.0, n_neighbours=7)
    assert plain.mining is None and mining.mining is not None
    without = fit_bytes(plain, SHAPE, batch=BATCH, views=2, n_images=N)
    with_nb = fit_bytes(mining, SHAPE, batch=BATCH, views=2, n_images=N)

    assert with_nb["neighbours"] == N * 7 * 8  # (N, k) int64
    for part in ("parameters", "data", "baseline"):
        assert with_nb[part] == without[part]
    encoder = encoder_bytes_per_image(mining, SHAPE)
    grown = with_nb["activations"] - without["activations"]
    assert grown == pytest.approx(encoder * BATCH * BACKWARD_FACTOR, rel=1e-6)
    # the encoder is a real share of one view, not all of it (the decoder is the rest)
    one_view = activation_bytes_per_image(mining, SHAPE) * BATCH * BACKWARD_FACTOR
    assert 0.1 * one_view < grown < one_view
    assert with_nb["total"] == without["total"] + grown + with_nb["neighbours"]


def test_the_neighbour_view_costs_what_autograd_keeps_for_it():
    model = _model(mi=1.0, neighbours=1.0)
    torch.manual_seed(1)
    x, nb = torch.rand(BATCH, *SHAPE), torch.rand(BATCH, *SHAPE)
    measured = _saved_bytes(model, x, nb) - _saved_bytes(model, x)
    estimated = encoder_bytes_per_image(model, SHAPE) * BATCH
    assert measured > 0
    assert estimated == pytest.approx(measured, rel=0.25)


@pytest.mark.parametrize("objectives", [None, {"mi": 1.0, "selflabel": 1.0}])
def test_without_neighbours_the_estimate_is_unchanged(objectives):
    model = build_autoencoder("gumbel", SHAPE, objectives=objectives)
    views = 1 if objectives is None else 2
    got = fit_bytes(model, SHAPE, batch=BATCH, views=views, n_images=N)
    assert set(got) == {"activations", "parameters", "data", "baseline", "total"}
    per_image = activation_bytes_per_image(model, SHAPE)
    assert got["activations"] == int(per_image * BATCH * views * BACKWARD_FACTOR)
    n_params = sum(p.numel() for p in model.parameters())
    assert got["parameters"] == n_params * 4 * 4  # weights, gradients, Adam's two moments
    assert got["data"] == N * 16 * 16 * 4


def test_estimator_plans_for_the_neighbour_view():
    recipe = DiscreteAutoencoder("gumbel", n_codes=10, batch_size=BATCH)
    names = "mi,contrastive,selflabel,style,neighbours"
    scan = DiscreteAutoencoder("gumbel", n_codes=10, batch_size=BATCH, objectives=names)
    base = recipe.fit_memory(SHAPE, N)
    more = scan.fit_memory(SHAPE, N)
    k = OBJECTIVE_DEFAULTS["n_neighbours"]
    assert "neighbours" not in base and more["neighbours"] == N * k * 8
    assert more["activations"] > base["activations"]
    assert more["total"] > base["total"]
