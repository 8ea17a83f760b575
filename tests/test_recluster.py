"""``objective_options={"embedding_kmeans": ...}`` / ``fit --embedding-kmeans``: k-means on
the contrastive embedding after the fit, its distillation into the code, the record in
the model file and the fit summary, the switch."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError

from discretae import DiscreteAutoencoder
from discretae.commands.fit import FIT_DEFAULTS
from discretae.core.errors import DiscretaeError
from discretae.data.datasets import load_dataset
from discretae.estimator import recluster as recluster_module
from discretae.estimator.recluster import embedding_clusters, embedding_kmeans_on
from discretae.evaluation.metrics import nmi
from discretae.models.objectives import OBJECTIVE_DEFAULTS, objective_settings


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return np.rint(load_dataset("digits").to_array() * 255).astype(np.uint8)[:400]


def recipe(on: bool | None, seed: int = 0, epochs: int = 4, **kw) -> DiscreteAutoencoder:
    options = {} if on is None else {"embedding_kmeans": on}
    return DiscreteAutoencoder(
        "gumbel", n_codes=6, epochs=epochs, random_state=seed, objective_options=options, **kw
    )


@pytest.mark.parametrize("bad", [0, 1, "yes", None])
def test_setting_is_checked(bad):
    with pytest.raises(DiscretaeError, match="embedding_kmeans"):
        objective_settings({"embedding_kmeans": bad})
    assert objective_settings({"embedding_kmeans": True})["embedding_kmeans"] is True


def test_the_cli_default_is_the_estimators():
    assert FIT_DEFAULTS["embedding_kmeans"] == OBJECTIVE_DEFAULTS["embedding_kmeans"]
    assert embedding_kmeans_on(None) == OBJECTIVE_DEFAULTS["embedding_kmeans"]
    assert embedding_kmeans_on({"embedding_kmeans": False}) is False


def test_embedding_clusters_find_separated_groups():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 4, 300)
    centres = torch.eye(8)[:4] * 5
    x = centres[truth] + 0.1 * torch.randn(300, 8, generator=torch.Generator().manual_seed(0))
    ids = embedding_clusters(x, 4, seed=0)
    assert ids.dtype == np.int64 and ids.shape == (300,) and set(ids) <= set(range(4))
    assert nmi(truth, ids) == pytest.approx(1.0)
    assert (embedding_clusters(x, 4, seed=0) == ids).all()  # seeded


def test_fit_distils_the_embeddings_clusters_and_round_trips(
    digits, tmp_path, monkeypatch, one_thread
):
    seen = []

    def spy(emb, k, seed):
        seen.append((emb.detach().cpu().clone(), k))
        return embedding_clusters(emb, k, seed)

    monkeypatch.setattr(recluster_module, "embedding_clusters", spy)
    events = []
    est = recipe(True, callback=events.append).fit(digits)
    r = est.recluster_
    assert set(r) == {"before", "fidelity", "distill_steps", "rule"} and "no labels" in r["rule"]
    ((emb, k),) = seen
    assert k == 6 and emb.shape[0] == len(digits)
    # the embedding is the model's contrastive one, L2-normalised
    assert torch.allclose(emb.norm(dim=1), torch.ones(len(digits)), atol=1e-3)
    targets = embedding_clusters(emb, 6, 0)
    assert r["fidelity"] == pytest.approx(nmi(targets, est.labels_))
    assert r["distill_steps"] > 0 and r["fidelity"] > r["before"] + 0.05
    assert [h.get("phase") for h in est.history_][-1] == "embedding clusters"
    assert events[-1]["phase"] == "embedding clusters"
    assert events[-1]["epochs"] == len(est.history_)
    assert (est.predict(digits) == est.labels_).all()
    est.save(tmp_path / "m.safetensors")
    back = DiscreteAutoencoder.load(tmp_path / "m.safetensors")
    assert back.recluster_ == r
    assert (back.predict(digits) == est.labels_).all()


def test_off_or_without_a_contrastive_embedding_nothing_is_done(digits, one_thread):
    assert recipe(False, epochs=1).fit(digits).recluster_ is None
    no_embedding = DiscreteAutoencoder(
        "gumbel", n_codes=6, epochs=1, objectives="mi", objective_options={"embedding_kmeans": True}
    ).fit(digits)
    assert no_embedding.recluster_ is None
    with pytest.raises(DiscretaeError, match="no view objective"):
        recipe(True, epochs=1, objectives="none").fit(digits)


def test_cli_embedding_kmeans(tmp_path):
    out = tmp_path / "k.safetensors"
    cmd = [sys.executable, "-m", "discretae.cli", "fit", "digits", "--embedding-kmeans",
           "--epochs", "2", "--codes", "6", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "embedding k-means" in proc.stdout and "steps toward them" in proc.stdout
    proc = subprocess.run([*cmd, "--json", "--quiet"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["recluster"]["distill_steps"] > 0
    off = [*cmd[:5], "--no-embedding-kmeans", *cmd[6:], "--json", "--quiet"]
    proc = subprocess.run(off, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["recluster"] is None


def test_recluster_after_a_fit_is_the_fits_last_step(digits, one_thread):
    """``recluster(X)`` on a model fitted without the option ends where a fit with it does."""
    with_step = recipe(True, seed=1).fit(digits)
    later = recipe(False, seed=1).fit(digits)
    assert later.recluster_ is None
    assert later.recluster(digits) is later
    assert later.recluster_ == with_step.recluster_
    assert (later.labels_ == with_step.labels_).all()
    assert (later.predict(digits) == with_step.predict(digits)).all()
    # what the fit recorded before stays; the step's record is the newest
    later.ensemble_ = {"members": 3}
    later.recluster(digits)
    assert later.ensemble_ == {"members": 3} and later.recluster_["distill_steps"] > 0


def test_recluster_refuses_what_it_cannot_do(digits, one_thread):
    with pytest.raises(NotFittedError):
        recipe(False).recluster(digits)
    no_embedding = DiscreteAutoencoder("gumbel", n_codes=6, epochs=1, objectives="mi").fit(digits)
    with pytest.raises(DiscretaeError, match="contrastive"):
        no_embedding.recluster(digits)
    assert no_embedding.recluster_ is None


def test_cli_says_when_the_step_cannot_apply(tmp_path):
    out = tmp_path / "m.safetensors"
    cmd = [sys.executable, "-m", "discretae.cli", "fit", "digits", "--objectives", "mi",
           "--embedding-kmeans", "--epochs", "1", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "--embedding-kmeans did nothing" in proc.stderr and out.exists()
    # without view objectives at all (binary's default) the estimator refuses first
    out.unlink()
    bad = [*cmd[:5], "--model", "binary", *cmd[7:]]
    proc = subprocess.run(bad, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1 and "embedding_kmeans" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not out.exists()
