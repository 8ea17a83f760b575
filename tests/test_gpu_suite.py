"""benchmarks/gpu_suite.py: its CPU dry run passes and writes suite.json, so the suite
cannot rot while no GPU is at hand; a failing or hanging step fails the suite."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "benchmarks" / "gpu_suite.py"


@pytest.fixture(scope="module")
def gpu_suite():
    spec = importlib.util.spec_from_file_location("gpu_suite", SUITE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path_factory.mktemp("suite")
    # as CI runs it: no Triton interpreter (tests/conftest.py sets one for this process)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, str(SUITE), "--device", "cpu", "--quick", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    return proc, out


def test_cpu_dry_run_passes_and_writes_json(dry_run, gpu_suite):
    proc, out = dry_run
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((out / "suite.json").read_text())
    assert report["ok"] is True and report["quick"] is True
    steps = {s["step"]: s for s in report["steps"]}
    assert list(steps) == gpu_suite.STEPS
    for s in steps.values():
        assert s["status"] in ("ok", "skipped"), s
        if s["status"] == "skipped":
            assert s["reason"], s
    log = (out / "suite.log").read_text()
    assert all(f"== {name}" in log for name in gpu_suite.STEPS)
    # committed as results: no paths of this machine (interpreter, checkout, --out)
    for text in (log, (out / "suite.json").read_text()):
        assert str(ROOT) not in text and str(out) not in text and sys.executable not in text
    assert "python benchmarks/gpu_suite.py --step clustering" in log


def test_dry_run_figures(dry_run):
    _, out = dry_run
    report = json.loads((out / "suite.json").read_text())
    steps = {s["step"]: s for s in report["steps"]}
    # no CUDA here: every gpu test is collected and skipped
    pytest_gpu = steps["pytest-gpu"]
    assert pytest_gpu["status"] == "skipped" and pytest_gpu["result"]["skipped"] >= 1
    doctor = steps["doctor"]["result"]
    assert doctor["devices"][0]["device"] == "cpu"
    assert json.loads((out / "doctor.json").read_text()) == doctor
    rows = steps["nearest-code"]["result"]["rows"]
    exact = next(r for r in rows if r["provider"] == "discretae-exact")
    assert exact["agreement"] == 1.0 and exact["tflops"] > 0
    agreement = next(t for t in report["targets"] if t["target"].endswith("float64"))
    assert agreement["met"] is True
    assert all(t["met"] is None for t in report["targets"] if t["shape"] is not None)
    fit = steps["clustering"]["result"]
    assert fit["dataset"] == "digits" and fit["fit_seconds"] > 0 and 0 <= fit["nmi"] <= 1
    ddp = steps["torchrun"]["result"]
    assert ddp["backend"] == "gloo" and ddp["world_size"] == 2 and ddp["epochs"] == 1


def test_optional_packages_are_named_when_missing(dry_run):
    proc, out = dry_run
    report = json.loads((out / "suite.json").read_text())
    vq = next(s for s in report["steps"] if s["step"] == "vq-layer")
    if report["optional"]["vector-quantize-pytorch"] == "not installed":
        assert vq["status"] == "skipped" and "not installed" in vq["reason"]
        assert "vector-quantize-pytorch is not installed" in proc.stdout
    else:
        assert vq["status"] == "ok" and vq["result"]["theirs_over_ours"] > 0


def test_targets(gpu_suite):
    rows = [
        {"shape": [1048576, 1024, 64], "provider": "discretae-exact", "tflops": 160.0,
         "agreement": 1.0, "peak_extra_mb": 10.0},
        {"shape": [1048576, 1024, 64], "provider": "discretae-fast", "tflops": 190.0,
         "agreement": 0.999, "peak_extra_mb": 10.0},
        {"shape": [65536, 65536, 64], "provider": "discretae-exact", "tflops": 100.0,
         "agreement": 0.5, "peak_extra_mb": 2048.0},
    ]  # fmt: skip
    got = {(t["target"], tuple(t["shape"] or ())): t for t in gpu_suite.check_targets(rows)}
    assert got[("exact TFLOP/s", (1048576, 1024, 64))]["met"] is True
    assert got[("fast TFLOP/s", (1048576, 1024, 64))]["met"] is False
    assert got[("fast TFLOP/s, D >= 128", (65536, 1024, 256))]["met"] is None
    worst = got[("exact agreement with float64", ())]
    assert worst["met"] is False and worst["got"] == 0.5 and worst["shapes_measured"] == 2
    assert got[("exact extra memory MiB", (65536, 65536, 64))]["met"] is False


@pytest.mark.parametrize(
    "code,reason",
    [
        ("import sys; print('boom', file=sys.stderr); sys.exit(3)", "exit 3: boom"),
        ("import time; time.sleep(30)", "timed out after 1 s"),
    ],
)
def test_a_failing_or_hanging_step_fails(gpu_suite, tmp_path, monkeypatch, code, reason):
    monkeypatch.setattr(gpu_suite, "plan", lambda name, a: [sys.executable, "-c", code])
    monkeypatch.setattr(gpu_suite, "QUICK_TIMEOUT", 1)
    args = ["--device", "cpu", "--quick", "--out", str(tmp_path), "--steps", "top-k"]
    assert gpu_suite.main(args) == 1
    report = json.loads((tmp_path / "suite.json").read_text())
    (step,) = report["steps"]
    assert step["status"] == "failed" and step["reason"] == reason
    assert report["ok"] is False


def test_top_k_step(gpu_suite, monkeypatch):
    """The step checks a top-k search against float64, whenever the kernels have one."""
    import discretae.kernels as kernels

    def exact(x, c, k):  # the float64 order itself
        d = (x.double()[:, None] - c.double()[None]).square().sum(-1)
        return d.sort(dim=1, stable=True).indices[:, :k], None

    def reversed_ties(x, c, k):  # right codes, the best two swapped
        idx = exact(x, c, k)[0]
        return idx[:, [1, 0, *range(2, k)]]

    a = argparse.Namespace(device="cpu", quick=True)
    monkeypatch.setattr(kernels, "nearest_codes", exact, raising=False)
    good = gpu_suite.step_top_k(a)
    assert good["agreement"] == 1.0 and good["k"] == gpu_suite.TOPK_SHAPE["quick"][3]
    assert good["ms"] > 0
    monkeypatch.setattr(kernels, "nearest_codes", reversed_ties)
    assert gpu_suite.step_top_k(a)["agreement"] == 0.0
    monkeypatch.delattr(kernels, "nearest_codes")
    assert gpu_suite.step_top_k(a) == {"skipped": "no top-k search in kernels yet"}
