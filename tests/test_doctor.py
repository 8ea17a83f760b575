"""`discretae doctor`: the checks pass on a healthy CPU install, and a broken kernel fails them.

The failing runs replace ``nearest_code`` inside the doctor module (in-process, through
Typer's CliRunner) with one that answers wrongly, and use smaller shapes to stay quick.
One real ``discretae doctor --json`` process checks the healthy path end to end.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from discretae.cli.app import app
from discretae.cli.doctor import _report
from discretae.commands import doctor as doctor_function
from discretae.commands.doctor import DoctorFailed, require_passed

doctor_module = sys.modules["discretae.commands.doctor"]
runner = CliRunner()
CHECKS = {"exact random", "exact offset", "fast gap", "speed"}
VERSIONS = {"python", "discretae", "torch", "triton", "numpy", "Pillow", "constriction"}
# correctness checks: deterministic; "speed" depends on how busy the machine is
CORRECTNESS = CHECKS - {"speed"}


@pytest.fixture(scope="module")
def healthy() -> dict:
    return doctor_function(device="cpu")


@pytest.fixture
def small(monkeypatch):
    """Smaller shapes, so each in-process run takes well under a second."""
    monkeypatch.setitem(doctor_module.EXACT_SHAPES, "cpu", [(512, 64, 16)])
    monkeypatch.setitem(doctor_module.EXACT_SHAPES, "interpreter", [(32, 16, 16)])
    monkeypatch.setitem(doctor_module.TIMING_SHAPES, "cpu", (2048, 64, 16))
    monkeypatch.setitem(doctor_module.REPEATS, "cpu", 2)


def broken(wrong_mode: str):
    """A nearest_code that answers one row wrongly (the code after the right one) in
    ``wrong_mode``: "exact" or "fast"."""
    real = doctor_module.nearest_code

    def nearest_code(x, codebook, *, precision="exact", backend="auto"):
        idx, sq = real(x, codebook, precision=precision, backend=backend)
        if precision == wrong_mode:
            idx = idx.clone()
            idx[0] = (idx[0] + 1) % codebook.shape[0]
        return idx, sq

    return nearest_code


def cli(*args: str):
    return runner.invoke(app, ["doctor", *args])


def test_healthy_cpu_result(healthy):
    assert VERSIONS <= set(healthy["versions"]), healthy["versions"]
    assert healthy["versions"]["torch"] == torch.__version__
    (cpu,) = healthy["devices"]
    assert cpu["device"] == "cpu" and cpu["threads"] >= 1
    assert cpu["backends"]["auto"] == "torch"
    torch_checks = {c["check"] for c in healthy["checks"] if c["backend"] == "torch"}
    assert torch_checks == CHECKS
    for c in healthy["checks"]:
        if c["check"] in CORRECTNESS:
            assert c["status"] == "pass", c
    exact = [c for c in healthy["checks"] if c["check"].startswith("exact")]
    assert all(c["matching"] == c["rows"] > 0 for c in exact)
    assert healthy["failed"] == sum(c["status"] == "fail" for c in healthy["checks"])
    assert healthy["passed"] == (healthy["failed"] == 0)


def test_triton_runs_only_under_the_interpreter_on_cpu(healthy):
    """tests/conftest.py sets TRITON_INTERPRET=1 on machines without CUDA."""
    triton = [c for c in healthy["checks"] if c["backend"] == "triton"]
    if doctor_module.interpreting():
        assert healthy["devices"][0]["backends"]["triton"] == "interpreter"
        assert {c["check"]: c["status"] for c in triton} == {
            "exact random": "pass",
            "exact offset": "pass",
            "fast gap": "pass",
            "speed": "skip",
        }
    else:
        assert healthy["devices"][0]["backends"]["triton"] == "not on this device"
        assert not triton


def test_offset_data_needs_the_float64_recheck():
    """The offset check is a real test: float32 differences cannot order its codes."""
    shape = doctor_module.EXACT_SHAPES["cpu"][0]
    x, c = doctor_module.make_inputs(shape, torch.device("cpu"), doctor_module.OFFSET, ties=False)
    want, _ = doctor_module.reference(x, c)
    f32 = torch.addmm((c * c).sum(1), x, c.T, alpha=-2.0).argmin(1)
    assert (f32 != want).float().mean() > 0.5


def test_a_wrong_index_fails_the_exact_checks(monkeypatch, small):
    monkeypatch.setattr(doctor_module, "nearest_code", broken("exact"))
    r = cli("--json", "--device", "cpu")
    assert r.exit_code == 1, r.output
    result = json.loads(r.stdout)  # the full report is printed before the error
    assert result["passed"] is False
    failed = {c["check"] for c in result["checks"] if c["status"] == "fail"}
    assert {"exact random", "exact offset"} <= failed
    bad = next(c for c in result["checks"] if c["check"] == "exact random")
    assert bad["matching"] == bad["rows"] - 1
    assert "first mismatch: row 0" in bad["figure"]
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("error: ") and "checks failed: cpu torch exact random" in line


def test_a_far_code_in_fast_mode_fails_the_gap_check(monkeypatch, small):
    monkeypatch.setattr(doctor_module, "nearest_code", broken("fast"))
    result = doctor_function(device="cpu")
    gap = next(c for c in result["checks"] if c["check"] == "fast gap" and c["backend"] == "torch")
    assert gap["status"] == "fail" and gap["gap_over_bound"] > 1.0
    assert all(c["status"] != "fail" for c in result["checks"] if c["check"].startswith("exact"))
    with pytest.raises(DoctorFailed, match="fast gap"):
        require_passed(result)


def test_a_slow_kernel_fails_the_speed_check(monkeypatch, small):
    monkeypatch.setitem(doctor_module.SLOWER_MAX, "cpu", 0.0)  # nothing is that fast
    r = cli("--device", "cpu")
    assert r.exit_code == 1
    assert "FAIL" in r.stdout and "exact/addmm" in r.stdout
    assert "cpu torch speed" in r.stderr


def test_table_has_a_line_per_check(healthy):
    from rich.console import Console

    console = Console(width=200, record=True, highlight=False)
    console.print(_report(healthy))
    text = console.export_text()
    for c in healthy["checks"]:
        assert f"{c['device']} {c['backend']}" in text and c["figure"] in text
    assert f"{len(healthy['checks'])} checks:" in text
    assert "nearest_code backend: torch" in text


def test_unknown_device_is_one_error_line():
    r = cli("--device", "gpu")
    assert r.exit_code == 1
    assert r.stderr.strip() == "error: device 'gpu' is not one of all, cpu, cuda, cuda:N"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_without_a_gpu_is_refused():
    r = cli("--device", "cuda")
    assert r.exit_code == 1 and "sees no CUDA device" in r.stderr


def test_subprocess_json_on_cpu():
    """A real process: JSON on stdout; exit 0, or 1 with an error line naming only the
    speed check when this shared machine was too busy to time it."""
    exe = shutil.which("discretae")
    cmd = [exe] if exe else [sys.executable, "-m", "discretae.cli"]
    args = [*cmd, "doctor", "--json", "--device", "cpu"]
    p = subprocess.run(args, capture_output=True, text=True, timeout=300)
    result = json.loads(p.stdout)
    assert {c["check"] for c in result["checks"]} == CHECKS
    failed = [c for c in result["checks"] if c["status"] == "fail"]
    assert all(c["check"] == "speed" for c in failed), failed
    assert p.returncode == (1 if failed else 0), p.stderr
    if failed:
        assert p.stderr.startswith("error: ") and "speed" in p.stderr
    else:
        assert p.stderr == ""
