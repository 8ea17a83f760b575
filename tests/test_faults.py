"""Faults during fit: checkpoints, resume, SIGKILL, SIGINT, and a loss that blows up.

Real `discretae fit` processes are killed with SIGKILL and interrupted with SIGINT once
their first checkpoint exists. Exact equality of resumed and uninterrupted runs holds on
a CPU with a fixed thread count (one here, in both the tests and the subprocesses).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from discretae import DiscretaeError, DiscreteAutoencoder
from discretae.cli.app import app
from discretae.commands import default_checkpoint
from discretae.commands import fit as fit_model
from discretae.core.serialization import read_model_file
from discretae.data.datasets import load_dataset
from discretae.models.checkpoint import read_checkpoint, write_checkpoint
from discretae.models.spikes import SPIKE
from discretae.models.training import (
    TrainingDiverged,
    TrainingInterrupted,
    make_train_state,
    train,
)

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


# one thread, as the subprocesses: equal thread counts give bitwise-equal CPU math
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return load_dataset("digits").to_array()[:400]


@pytest.fixture(scope="module")
def data_npy(tmp_path_factory, digits) -> Path:
    """digits as uint8 (N, 8, 8): 400 images."""
    path = tmp_path_factory.mktemp("faults") / "digits.npy"
    np.save(path, np.rint(digits[:, 0] * 255).astype(np.uint8))
    return path


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def start_fit(*args) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "discretae.cli", "fit", *map(str, args), "--device", "cpu", "-q"]
    return subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"fit exited {proc.returncode} first: {proc.stderr.read()}")
        if time.monotonic() > end:
            proc.kill()
            raise AssertionError(f"no checkpoint {path} after {timeout} s")
        time.sleep(0.02)


# ------------------------------------------------------------------- resume (in-process)
class _Stop(Exception):
    pass


@pytest.mark.parametrize("kind", ["vq", "gumbel", "binary"])
def test_resume_mid_epoch_matches_uninterrupted(tmp_path, digits, kind):
    """Stop after step 11 (checkpoint at 10, mid-epoch), resume: the same weights and
    history as one uninterrupted run, bit for bit."""
    kw = dict(model=kind, n_codes=8, n_bits=8, epochs=3, batch_size=64, device="cpu", width=8)
    whole = DiscreteAutoencoder(**kw, random_state=3).fit(digits)

    steps = []

    def stop_at_11(event):
        steps.append(event)
        if len(steps) == 11:
            raise _Stop

    ckpt = tmp_path / "run.ckpt.safetensors"
    with pytest.raises(_Stop):
        DiscreteAutoencoder(**kw, random_state=3, callback=stop_at_11).fit(
            digits, checkpoint=ckpt, checkpoint_every=5
        )
    ck = read_checkpoint(ckpt)
    assert ck.step == 10 and ck.epoch == 1  # 7 steps per epoch: mid-way through the 2nd
    resumed = DiscreteAutoencoder.from_checkpoint(ckpt, device="cpu").fit(digits, resume=ckpt)
    assert same_weights(whole.model_.state_dict(), resumed.model_.state_dict())
    drop = [{k: v for k, v in h.items() if k != "seconds"} for h in whole.history_]
    assert drop == [{k: v for k, v in h.items() if k != "seconds"} for h in resumed.history_]
    assert np.array_equal(whole.labels_, resumed.labels_)


def test_checkpoint_restores_optimizer_and_rng(tmp_path, digits):
    est = DiscreteAutoencoder(model="gumbel", width=8, device="cpu")
    model = est._build((1, 8, 8))
    state = make_train_state(model, lr=0.01, seed=5)
    x = torch.from_numpy(digits[:32])
    out = model(x)
    (out["recon_loss"] + out["aux_loss"]).backward()
    state.optimizer.step()
    torch.manual_seed(123)
    write_checkpoint(tmp_path / "c.safetensors", state, {"params": {}})
    expected = torch.rand(3)
    ck = read_checkpoint(tmp_path / "c.safetensors")
    adam = ck.config["optimizer"]["param_groups"][0]
    assert adam["lr"] == 0.01
    assert any(k.startswith("optim.") and k.endswith(".exp_avg_sq") for k in ck.tensors)
    from discretae.models.checkpoint import restore_rng

    torch.manual_seed(0)
    restore_rng(ck)
    assert torch.equal(torch.rand(3), expected)


def test_resume_refuses_other_settings_data_and_files(tmp_path, digits):
    ckpt = tmp_path / "c.ckpt.safetensors"
    kw = dict(model="gumbel", width=8, epochs=1, batch_size=64, device="cpu")
    DiscreteAutoencoder(**kw).fit(digits, checkpoint=ckpt, checkpoint_every=3)
    with pytest.raises(DiscretaeError, match=r"settings differ: epochs=2 \(checkpoint: 1\)"):
        DiscreteAutoencoder(**{**kw, "epochs": 2}).fit(digits, resume=ckpt)
    with pytest.raises(DiscretaeError, match="trained on other data"):
        DiscreteAutoencoder(**kw).fit(digits[:-1], resume=ckpt)
    with pytest.raises(DiscretaeError, match="trained on other data"):
        DiscreteAutoencoder(**kw).fit(digits[::-1].copy(), resume=ckpt)  # same rows, reordered
    # the same images as uint8 or as floats in [0, 1] are the same data
    u8 = np.rint(digits * 255).astype(np.uint8)
    DiscreteAutoencoder(**kw).fit(u8, checkpoint=ckpt, checkpoint_every=3)
    resumed = DiscreteAutoencoder(**kw).fit(u8.astype(np.float32) / 255, resume=ckpt)
    assert len(resumed.history_) == 1
    model = tmp_path / "m.safetensors"
    DiscreteAutoencoder(**kw).fit(digits).save(model)
    with pytest.raises(DiscretaeError, match="not a discretae checkpoint"):
        read_checkpoint(model)
    with pytest.raises(DiscretaeError, match="--epochs 5 \\(checkpoint: 1\\)"):
        fit_model("digits", out=tmp_path / "o.safetensors", epochs=5, resume=ckpt)


def test_resume_keeps_the_augmentation_ranges(tmp_path):
    """A run started with --augment resumes with its ranges, and other ranges are refused."""
    out = tmp_path / "aug.safetensors"
    kw = {"out": out, "epochs": 2, "batch_size": 256, "device": "cpu", "checkpoint_every": 3}
    fit_model("digits", augment="erase=0.25", **kw)
    ckpt = default_checkpoint(out)
    with pytest.raises(DiscretaeError, match=r"--augment \{'erase': 0.3\} \(checkpoint"):
        fit_model("digits", augment="erase=0.3", resume=ckpt, **kw)
    summary = fit_model("digits", resume=ckpt, **kw)
    assert summary["augment"] == {"erase": 0.25}
    assert DiscreteAutoencoder.load(out).model_.augment.erase == 0.25


# ----------------------------------------------------------------------- NaN and inf
def test_nan_loss_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path, data_npy):
    out = tmp_path / "nan.safetensors"
    ckpt = default_checkpoint(out)
    with pytest.raises(TrainingDiverged) as info:
        # lr 1e30: the first step is finite, the weights it makes overflow the next
        fit_model(str(data_npy), out=out, model="vq", lr=1e30, checkpoint_every=1, device="cpu")
    message = str(info.value)
    assert info.value.step == 2
    assert "nan" in message and "at step 2" in message
    assert f"last good checkpoint is {str(ckpt)!r} (step 1)" in message
    assert not out.exists()
    ck = read_checkpoint(ckpt)
    assert ck.step == 1
    weights = [v for k, v in ck.tensors.items() if k.startswith("model.") and v.is_floating_point()]
    assert all(bool(torch.isfinite(w).all()) for w in weights)


def test_nan_loss_on_the_command_line(tmp_path, data_npy):
    out = tmp_path / "nan.safetensors"
    r = CliRunner().invoke(
        app, ["fit", str(data_npy), "--lr", "1e30", "--out", str(out), "--device", "cpu", "-q"]
    )
    assert r.exit_code == 1
    assert r.stderr.count("\n") == 1 and "error: training diverged" in r.stderr
    assert "at step 2" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()


# --------------------------------------------------------------------- real processes
def test_sigkill_mid_training_then_resume(tmp_path, data_npy):
    out = tmp_path / "model.safetensors"
    ckpt = default_checkpoint(out)
    args = [data_npy, "--model", "vq", "--codes", "8", "--epochs", "12", "--batch-size", "16"]
    proc = start_fit(*args, "--checkpoint-every", "5", "--out", out)
    wait_for(ckpt, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()  # killed before the end
    killed_at = read_checkpoint(ckpt).step
    assert 5 <= killed_at < 12 * 25 and killed_at % 5 == 0

    r = subprocess.run(
        [sys.executable, "-m", "discretae.cli", "fit", str(data_npy), "--resume", str(ckpt)]
        + ["--out", str(out), "--device", "cpu", "-q"],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    est = DiscreteAutoencoder.load(out, device="cpu")
    images = np.load(data_npy)
    codes = est.transform(images)
    assert codes.shape == (len(images),) and codes.max() < 8
    assert len(est.history_) == 12

    # the same command without the kill gives the same model
    whole = tmp_path / "whole.safetensors"
    fit_model(str(data_npy), out=whole, model="vq", codes=8, epochs=12, batch_size=16, device="cpu")
    assert same_weights(read_model_file(whole)[0], read_model_file(out)[0])


def test_sigint_saves_a_checkpoint_and_exits_130(tmp_path, data_npy):
    out = tmp_path / "model.safetensors"
    ckpt = tmp_path / "run.ckpt.safetensors"
    args = [data_npy, "--epochs", "20", "--batch-size", "16", "--checkpoint", ckpt]
    proc = start_fit(*args, "--checkpoint-every", "50", "--out", out)
    wait_for(ckpt, proc)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted by SIGINT" in stderr and f"--resume {ckpt}" in stderr
    assert "Traceback" not in stderr and not out.exists()
    interrupted_at = read_checkpoint(ckpt).step
    assert f"after step {interrupted_at}" in stderr
    result = fit_model(str(data_npy), out=out, resume=ckpt, device="cpu")
    assert result["epochs"] == 20 and result["resumed_from"] == str(ckpt)
    assert DiscreteAutoencoder.load(out).transform(np.load(data_npy)).shape == (400,)


def test_sigint_in_process_stops_after_the_step(tmp_path, digits):
    def interrupt_at_3(event):
        if event["step"] == 3 and event["epoch"] == 1:
            os.kill(os.getpid(), signal.SIGINT)

    ckpt = tmp_path / "c.safetensors"
    est = DiscreteAutoencoder(
        model="binary", width=8, epochs=2, batch_size=64, device="cpu", callback=interrupt_at_3
    )
    # Python's default handler, or SIG_IGN when the test run itself was started in the
    # background by a non-interactive shell
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(TrainingInterrupted) as info:
        est.fit(digits, checkpoint=ckpt)
    # the flag is read with the next step's losses; that step is finished, then saved
    assert info.value.step == 4 and info.value.checkpointed
    assert read_checkpoint(ckpt).step == 4
    assert signal.getsignal(signal.SIGINT) is before  # restored


def test_a_checkpoint_from_before_the_decoder_and_framing_settings_resumes(tmp_path, digits):
    """A recipe checkpoint written before decoder, image_size, resize and background
    existed holds the full decoder's weights: it resumes with them, bit for bit."""
    from discretae.core.serialization import read_tagged_file, write_tagged_file
    from discretae.models.checkpoint import FORMAT, FORMAT_VERSION

    kw = dict(n_codes=8, epochs=2, batch_size=64, device="cpu", random_state=1)
    whole = DiscreteAutoencoder(**kw, decoder="full").fit(digits)
    steps = []

    def stop_at_9(event):
        steps.append(event)
        if len(steps) == 9:
            raise _Stop

    ckpt = tmp_path / "old.ckpt.safetensors"
    with pytest.raises(_Stop):
        DiscreteAutoencoder(**kw, decoder="full", callback=stop_at_9).fit(
            digits, checkpoint=ckpt, checkpoint_every=4
        )
    tensors, config = read_tagged_file(ckpt, fmt=FORMAT, version=FORMAT_VERSION, what="checkpoint")
    for key in ("decoder", "image_size", "resize", "background"):
        del config["params"][key]
    config["model"].pop("decoder", None)
    write_tagged_file(ckpt, tensors, config, fmt=FORMAT, version=FORMAT_VERSION)
    resumed = DiscreteAutoencoder.from_checkpoint(ckpt, device="cpu")
    assert resumed.decoder == "full"  # not today's "auto", which is light for the recipe
    resumed.fit(digits, resume=ckpt)
    assert same_weights(whole.model_.state_dict(), resumed.model_.state_dict())
    # and through the CLI, whose --decoder default is auto
    data = tmp_path / "digits.npy"
    np.save(data, digits)
    out = tmp_path / "m.safetensors"
    r = CliRunner().invoke(
        app, ["fit", str(data), "--resume", str(ckpt), "--out", str(out), "--json", "-q"]
    )
    assert r.exit_code == 0, r.output
    assert DiscreteAutoencoder.load(out).model_.config["decoder"] == "full"


# ----------------------------------------------------------------------- loss spikes
def _train_through_a_spike(digits, kind: str, spike_guard: bool):
    """Three epochs of a small model whose weights are scrambled at the first step of
    epoch 2 (once): that epoch's reconstruction loss rises far above epoch 1's."""
    model = DiscreteAutoencoder(model=kind, width=8, device="cpu")._build((1, 8, 8))
    torch.manual_seed(0)
    state = make_train_state(model, lr=0.01, seed=0)
    scrambled = []

    def scramble(info):
        if info["epoch"] == 2 and info["step"] == 1 and not scrambled:
            scrambled.append(True)
            with torch.no_grad():
                for p in model.parameters():
                    p.copy_(torch.randn_like(p) * 3)

    data = torch.from_numpy(digits)
    train(state, data, epochs=3, batch_size=32, callback=scramble, spike_guard=spike_guard)
    return state


def test_a_loss_spike_is_rolled_back_at_half_the_learning_rate(digits):
    state = _train_through_a_spike(digits, "vq", spike_guard=True)
    epochs = [h["epoch"] for h in state.history]
    assert epochs == [1, 2, 2, 3]
    assert [bool(h.get("rolled_back")) for h in state.history] == [False, True, False, False]
    assert state.history[1]["recon"] > SPIKE * state.history[0]["recon"]
    # the rerun epochs start from epoch 1's weights: no trace of the spike
    assert state.history[3]["recon"] < state.history[0]["recon"]
    assert state.optimizer.param_groups[0]["lr"] == pytest.approx(0.005)
    assert state.epoch == 3 and state.step == 3 * (len(digits) // 32 + 1)


def test_without_the_guard_the_spike_stays(digits):
    state = _train_through_a_spike(digits, "vq", spike_guard=False)
    assert [h["epoch"] for h in state.history] == [1, 2, 3]
    assert state.history[2]["recon"] > SPIKE * min(h["recon"] for h in state.history[:1])
    assert state.optimizer.param_groups[0]["lr"] == 0.01


def test_the_guard_is_for_reconstruction_models_alone():
    est = DiscreteAutoencoder(device="cpu")
    for kind, guarded in (("vq", True), ("rvq", True), ("binary", True), ("gumbel", False)):
        model = DiscreteAutoencoder(model=kind, width=8, device="cpu")._build((1, 8, 8))
        assert est.spike_guarded(model) is guarded, kind
