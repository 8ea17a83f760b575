"""``objective_options={"heads": H}`` / ``fit --heads H``: extra code heads train with the
code terms, every head's codes, the label-free choice, its distillation, files, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from discretae import DiscreteAutoencoder
from discretae.core.errors import DiscretaeError
from discretae.data.datasets import load_dataset
from discretae.estimator import heads as heads_module
from discretae.estimator.heads import head_agreement
from discretae.evaluation.metrics import nmi
from discretae.models.objectives import VIEW_TERMS, ViewObjectives, objective_settings


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return np.rint(load_dataset("digits").to_array() * 255).astype(np.uint8)[:400]


def with_heads(n: int, seed: int = 0, epochs: int = 3, **kw) -> DiscreteAutoencoder:
    return DiscreteAutoencoder(
        "gumbel", n_codes=6, epochs=epochs, random_state=seed, objective_options={"heads": n}, **kw
    )


def objectives(heads: int, **settings) -> ViewObjectives:
    given = objective_settings({"heads": heads, "selflabel": 1.0, **settings})
    return ViewObjectives.from_settings(given, n_codes=5, latent_dim=8)


@pytest.mark.parametrize("bad", [0, 1.5, True, "3"])
def test_heads_setting_is_checked(bad):
    with pytest.raises(DiscretaeError, match="heads"):
        objective_settings({"heads": bad})


def test_one_head_sums_the_terms_as_before():
    torch.manual_seed(0)
    obj = objectives(1)
    assert obj.extra_heads is None
    logits, z, h = torch.randn(16, 5), torch.randn(16, 8), torch.randn(16, 64)
    total, parts = obj(logits, z, h)
    assert "heads" not in parts and list(parts) == [k for k in VIEW_TERMS if k in parts]
    assert total == sum(obj.weights[k] * v for k, v in parts.items())


def test_extra_heads_add_their_code_terms_and_get_gradients():
    torch.manual_seed(0)
    obj = objectives(3, neighbours=1.0)
    assert obj.extra_heads.shape == (2, 5, 8)
    logits, z, h = torch.randn(16, 5), torch.randn(16, 8), torch.randn(16, 64)
    nb_logits, nb_z = torch.randn(8, 5), torch.randn(8, 8)
    total, parts = obj(logits, z, h, nb_logits, nb_z)
    # by hand: each extra head's mi, selflabel and neighbours terms on its own logits
    want = 0.0
    for lg, nb in zip(obj.head_logits(z), obj.head_logits(nb_z), strict=True):
        terms = obj._code_terms(lg, nb)
        assert set(terms) == {"mi", "selflabel", "neighbours"}
        want = want + sum(obj.weights[k] * v for k, v in terms.items())
    assert float(parts["heads"]) == pytest.approx(float(want.detach()), rel=1e-6)
    base = sum(obj.weights[k] * v for k, v in parts.items() if k != "heads")
    assert float(total.detach()) == pytest.approx(float((base + want).detach()), rel=1e-6)
    total.backward()
    assert obj.extra_heads.grad is not None and obj.extra_heads.grad.abs().sum() > 0


def test_head_logits_and_codes_are_the_quantizers_form():
    torch.manual_seed(1)
    obj = objectives(3)
    z = torch.randn(50, 8)
    d = ((z.double()[None, :, None] - obj.extra_heads.double()[:, None]) ** 2).sum(-1)
    assert torch.allclose(obj.head_logits(z).double(), -d, atol=1e-4)
    assert torch.equal(obj.head_codes(z), d.argmin(-1).t())


def test_head_agreement_prefers_the_head_the_others_share():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 4, 500)
    b = (a + 1) % 4  # a, renumbered
    c = rng.integers(0, 4, 500)  # unrelated
    agree = head_agreement([c, a, b])
    assert agree[1] == agree[2] == pytest.approx((1.0 + nmi(a, c)) / 2)
    assert agree[0] < 0.1
    assert int(np.argmax(agree)) == 1  # the first of a tie


def test_fit_with_heads_records_the_choice_and_round_trips(digits, tmp_path, one_thread):
    est = with_heads(3, epochs=10).fit(digits)
    h = est.heads_
    assert h["heads"] == 3 and len(h["agreement"]) == 3 and "no labels" in h["rule"]
    assert h["kept"] == int(np.argmax(h["agreement"]))
    codes = est._head_codes(torch.from_numpy(digits)).numpy()
    assert codes.shape == (len(digits), 3)
    # every head learned a partition of the images, not noise (the extra heads train)
    assert min(nmi(codes[:, 0], codes[:, i]) for i in (1, 2)) > 0.2
    assert (codes[:, 0] == est.labels_).all()  # the exported code is head 0, distilled or not
    est.save(tmp_path / "m.safetensors")
    back = DiscreteAutoencoder.load(tmp_path / "m.safetensors")
    assert back.heads_ == h
    assert (back.predict(digits) == est.labels_).all()
    assert DiscreteAutoencoder("gumbel", n_codes=6, epochs=1).fit(digits).heads_ is None


def test_another_kept_head_is_distilled_into_the_code(digits, monkeypatch, one_thread):
    # the rule made to keep head 1, so the distillation runs (on real heads, it may not)
    seen = []
    monkeypatch.setattr(
        heads_module, "head_agreement", lambda parts: seen.append(parts) or [0.0, 1.0, 0.0]
    )
    events = []
    est = with_heads(3, callback=events.append).fit(digits)
    h = est.heads_
    assert h["kept"] == 1 and h["distill_steps"] > 0
    assert [e.get("phase") for e in est.history_][-1] == "kept head"
    assert events[-1]["phase"] == "kept head" and events[-1]["epoch"] == events[-1]["epochs"]
    assert events[-1]["epochs"] == len(est.history_)
    (parts,) = seen
    # the exported code moved toward the kept head's clusters of before the distillation
    assert h["fidelity"] == pytest.approx(nmi(parts[1], est.labels_))
    assert h["fidelity"] > nmi(parts[1], parts[0]) + 0.05


def test_cli_heads(digits, tmp_path):
    out = tmp_path / "h.safetensors"
    cmd = [sys.executable, "-m", "discretae.cli", "fit", "digits", "--heads", "3",
           "--epochs", "2", "--codes", "6", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "kept head" in proc.stdout and "agreement with the others" in proc.stdout
    proc = subprocess.run([*cmd[:-2], "--json", "--quiet", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["heads"]["heads"] == 3
    bad = subprocess.run([*cmd[:6], "0", *cmd[7:]], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--heads" in bad.stderr


def test_heads_refuse_torchrun_before_any_work(digits, monkeypatch):
    from discretae.core import distributed

    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    est = with_heads(3)
    with pytest.raises(DiscretaeError, match="not under torchrun"):
        est.fit(digits)
    assert not hasattr(est, "model_")
