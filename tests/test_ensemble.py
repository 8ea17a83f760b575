"""``ensemble=N``: members, their consensus, the kept member's distillation, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from discretae import DiscreteAutoencoder
from discretae.core.errors import DiscretaeError
from discretae.data.datasets import load_dataset
from discretae.estimator.ensemble import aligned, consensus_labels
from discretae.evaluation.metrics import nmi
from discretae.models.training import make_train_state, train


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return np.rint(load_dataset("digits").to_array() * 255).astype(np.uint8)[:300]


def small(seed: int = 0, **kw) -> DiscreteAutoencoder:
    return DiscreteAutoencoder("gumbel", n_codes=4, epochs=2, random_state=seed, **kw)


def test_consensus_outvotes_one_members_split():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, 600)
    a = truth.copy()
    b = (truth + 1) % 3  # the same partition, other numbers
    c = truth.copy()
    c[(truth == 0) & (rng.random(600) < 0.5)] = 1  # merges half of cluster 0 into 1
    cons = consensus_labels([a, b, c], 3, seed=0)
    assert nmi(truth, cons) == pytest.approx(1.0)
    assert nmi(truth, c) < 0.8
    again = consensus_labels([a, b, c], 3, seed=0)
    assert (cons == again).all()


def test_aligned_renumbers_to_the_members_codes():
    codes = np.array([0, 0, 1, 1, 2, 2, 3])
    consensus = np.array([2, 2, 0, 0, 1, 1, 1])  # code 3 has no cluster of its own
    out = aligned(consensus, codes, 4)
    assert out.tolist() == [0, 0, 1, 1, 2, 2, 2]
    assert nmi(out, consensus) == pytest.approx(1.0)


def test_training_toward_targets_moves_the_codes_to_them(digits, one_thread):
    est = small(objectives="none").fit(digits)
    before = est.predict(digits)
    # a partition the model did not find: by mean brightness, in four bands
    brightness = digits.reshape(len(digits), -1).mean(1)
    targets = np.searchsorted(np.quantile(brightness, [0.25, 0.5, 0.75]), brightness)
    state = make_train_state(est.model_, lr=5e-4, seed=0)
    torch.manual_seed(0)
    x = torch.from_numpy(digits)
    train(state, x, epochs=40, batch_size=64, targets=torch.from_numpy(targets))
    after = est.predict(digits)
    assert nmi(targets, after) > nmi(targets, before) + 0.2
    assert "consensus" not in est.model_.config  # nothing of it is stored


def test_an_ensemble_fit_keeps_one_distilled_member(digits, one_thread, tmp_path):
    events = []
    est = small(seed=5, ensemble=3, callback=events.append).fit(digits)
    e = est.ensemble_
    assert e["members"] == 3 and e["seeds"] == [5, 6, 7]
    assert len(e["member_agreement"]) == 3 and 0 <= e["kept"] < 3
    assert e["to_consensus"][e["kept"]] == max(e["to_consensus"])
    assert e["distill_steps"] > 0 and 0 <= e["fidelity"] <= 1
    assert (est.predict(digits) == est.labels_).all()
    # one progress over the whole ensemble: members, then the distillation
    phases = [ev["phase"] for ev in events]
    assert phases[0] == "member 1/3" and phases[-1] == "consensus"
    assert {"member 2/3", "member 3/3"} <= set(phases)
    epochs = [ev["epoch"] for ev in events]
    assert epochs == sorted(epochs) and epochs[-1] == events[-1]["epochs"]
    assert est.history_[-1]["phase"] == "consensus"
    path = tmp_path / "m.safetensors"
    est.save(path)
    back = DiscreteAutoencoder.load(path)
    assert back.ensemble_ == json.loads(json.dumps(e))
    assert (back.predict(digits) == est.labels_).all()
    assert small().fit(digits).ensemble_ is None


def test_fit_consensus_of_members_fitted_apart(digits, one_thread, tmp_path):
    paths = []
    for seed in (0, 1):
        paths.append(tmp_path / f"m{seed}.safetensors")
        small(seed).fit(digits).save(paths[-1])
    members = [DiscreteAutoencoder.load(p) for p in paths]
    est = small().fit_consensus(members, digits)
    assert est.ensemble_["seeds"] == [0, 1] and est.ensemble_["members"] == 2
    with pytest.raises(DiscretaeError, match="at least 2"):
        small().fit_consensus(members[:1], digits)
    with pytest.raises(DiscretaeError, match="n_codes=5"):
        DiscreteAutoencoder("gumbel", n_codes=5).fit_consensus(members, digits)


@pytest.mark.parametrize(
    "params, fit_kw, match",
    [
        ({"model": "vq", "latent": "grid"}, {}, "code is the cluster"),
        ({"n_clusters": 3}, {}, "code is the cluster"),
        ({}, {"checkpoint": "c.safetensors", "checkpoint_every": 5}, "checkpoint"),
    ],
)
def test_what_an_ensemble_refuses(digits, tmp_path, monkeypatch, params, fit_kw, match):
    monkeypatch.chdir(tmp_path)
    est = DiscreteAutoencoder(**{"n_codes": 4, "ensemble": 2, **params})
    with pytest.raises(DiscretaeError, match=match):
        est.fit(digits, **fit_kw)
    with pytest.raises(DiscretaeError, match="ensemble"):
        DiscreteAutoencoder(ensemble=0).fit(digits)


def test_cli_fits_an_ensemble(digits, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for k, img in enumerate(digits[:120]):
        Image.fromarray(img[0]).save(folder / f"{k:03d}.png")
    cli = [sys.executable, "-m", "discretae.cli", "fit", str(folder), "--codes", "4"]
    model = tmp_path / "m.safetensors"
    run = subprocess.run(
        [*cli, "--ensemble", "2", "--epochs", "2", "--out", str(model)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "2 members (seeds 0, 1)" in run.stdout
    assert DiscreteAutoencoder.load(model).ensemble_["members"] == 2
    bad = subprocess.run(
        [*cli, "--ensemble", "2", "--model", "vq", "--latent", "grid", "--out", "x.safetensors"],
        capture_output=True, text=True, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert bad.returncode == 1 and "code is the cluster" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.safetensors").exists()
    zero = subprocess.run([*cli, "--ensemble", "0"], capture_output=True, text=True, check=False)
    assert zero.returncode == 2
