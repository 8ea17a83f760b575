"""Bad input: every case ends in one `error: ...` line on stderr, a non-zero exit, no
traceback, and nothing written under the output name.

Most cases run in-process through Typer's CliRunner (the same error handling as the
console script); a few run the installed `discretae` in a real process.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

from discretae.cli.app import app
from discretae.core.errors import DiscretaeError

runner = CliRunner()


def check_failure(exit_code: int, stdout: str, stderr: str, *outputs: Path, code: int = 1):
    """One error line, the expected exit code, no traceback, no output file."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert exit_code == code, f"exit {exit_code}\n{stdout}\n{stderr}"
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ") and len(lines[0]) > len("error: ") + 10
    assert "Traceback" not in stdout + stderr
    for out in outputs:
        assert not out.exists(), f"{out} was written"
        leftovers = (
            [p.name for p in out.parent.glob(f".{out.name}*")] if out.parent.is_dir() else []
        )
        assert leftovers == [], leftovers
    return lines[0]


def fails(*args: object, outputs: tuple[Path, ...] = (), code: int = 1) -> str:
    """Run in-process, check the failure, return the error line."""
    r = runner.invoke(app, [str(a) for a in args])
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    return check_failure(r.exit_code, r.stdout, r.stderr, *outputs, code=code)


def fails_in_process(*args: object, outputs: tuple[Path, ...] = ()) -> str:
    """Run the installed console script, check the failure, return the error line."""
    exe = shutil.which("discretae")
    cmd = [exe] if exe else [sys.executable, "-m", "discretae.cli"]
    r = subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, timeout=120)
    return check_failure(r.returncode, r.stdout, r.stderr, *outputs)


def png_folder(root: Path, n: int = 6, mode: str = "L") -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (rng.random((8, 8)) * 255).astype(np.uint8)
        Image.fromarray(pixels, mode="L").convert(mode).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A gray 8x8 gumbel model, fitted for one epoch."""
    work = tmp_path_factory.mktemp("bad-model")
    out = work / "model.safetensors"
    r = runner.invoke(app, ["fit", str(png_folder(work / "data")), "--epochs", "1", "--codes",
                            "3", "--out", str(out), "-q"])  # fmt: skip
    assert r.exit_code == 0, r.stderr
    return out


@pytest.fixture
def out(tmp_path) -> Path:
    return tmp_path / "out.npy"


# -------------------------------------------------------------------------- data
def test_missing_path(tmp_path, out):
    line = fails("fit", tmp_path / "nothere", "--out", out)
    assert "nothere" in line


def test_missing_path_in_process(tmp_path, model):
    out = tmp_path / "codes.npy"
    line = fails_in_process("encode", tmp_path / "nothere", "-m", model, "--out", out,
                            outputs=(out,))  # fmt: skip
    assert "nothere" in line


def test_empty_folder(tmp_path, out):
    (tmp_path / "empty").mkdir()
    assert "empty" in fails("fit", tmp_path / "empty", "--out", out, outputs=(out,))


def test_folder_without_images(tmp_path, out):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.txt").write_text("no pictures here")
    assert "no images" in fails("fit", tmp_path / "docs", "--out", out, outputs=(out,))


def test_not_an_image_named_png_strict(tmp_path, model, out):
    data = png_folder(tmp_path / "data")
    (data / "a" / "fake.png").write_text("I am text")
    names = tmp_path / "names.txt"
    line = fails("encode", data, "-m", model, "--strict", "--out", out, "--with-names", names,
                 outputs=(out, names))  # fmt: skip
    assert "fake.png" in line


def test_one_image_file_not_an_image(tmp_path, model):
    """A single file given as DATA is checked before any work, with or without --strict."""
    (tmp_path / "fake.png").write_text("I am text")
    out = tmp_path / "codes.npy"
    line = fails_in_process("encode", tmp_path / "fake.png", "-m", model, "--out", out,
                            outputs=(out,))  # fmt: skip
    assert "fake.png" in line and "not an image" in line
    (tmp_path / "notes.txt").write_text("no pictures here")
    assert "unsupported file" in fails("fit", tmp_path / "notes.txt", "--out", out)


def test_truncated_image_strict(tmp_path, out):
    data = png_folder(tmp_path / "data")
    whole = (data / "a" / "1.png").read_bytes()
    (data / "a" / "cut.png").write_bytes(whole[: len(whole) // 2])
    line = fails("fit", data, "--strict", "--epochs", 1, "--out", out, outputs=(out,))
    assert "cut.png" in line


def test_zero_byte_image_strict(tmp_path, out):
    data = png_folder(tmp_path / "data")
    (data / "b" / "zero.png").write_bytes(b"")
    line = fails("fit", data, "--strict", "--epochs", 1, "--out", out, outputs=(out,))
    assert "zero.png" in line


def test_npy_wrong_shape(tmp_path, out):
    np.save(tmp_path / "flat.npy", np.zeros(5, np.float32))
    assert "shape" in fails("fit", tmp_path / "flat.npy", "--out", out, outputs=(out,))


def test_npy_wrong_dtype(tmp_path, out):
    np.save(tmp_path / "text.npy", np.array([["a", "b"], ["c", "d"]]))
    assert "dtype" in fails("fit", tmp_path / "text.npy", "--out", out, outputs=(out,))


def test_npy_of_python_objects(tmp_path, out):
    np.save(tmp_path / "objs.npy", np.array([{"a": 1}] * 4, dtype=object), allow_pickle=True)
    assert "object" in fails("fit", tmp_path / "objs.npy", "--out", out, outputs=(out,))


def test_labels_wrong_length(tmp_path, out):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((6, 8, 8), np.float32))
    np.save(tmp_path / "y.npy", np.arange(3))
    line = fails("fit", tmp_path / "x.npy", "--labels", tmp_path / "y.npy", "--out", out,
                 outputs=(out,))  # fmt: skip
    assert "3" in line and "6" in line


def test_labels_wrong_length_for_codes(tmp_path):
    np.save(tmp_path / "codes.npy", np.zeros(10, np.uint8))
    np.save(tmp_path / "y.npy", np.arange(4))
    report = tmp_path / "report.json"
    line = fails("evaluate", "--codes", tmp_path / "codes.npy", "--labels", tmp_path / "y.npy",
                 "--report", report, outputs=(report,))  # fmt: skip
    assert str(tmp_path / "y.npy") in line and "4 entries" in line and "10 images" in line


# ------------------------------------------------------------------------- models
def test_model_file_not_ours(tmp_path, out):
    foreign = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(3)}, str(foreign))
    assert "not a discretae model" in fails("encode", "digits", "-m", foreign, "--out", out,
                                            outputs=(out,))  # fmt: skip


def test_model_file_not_safetensors(tmp_path, out):
    junk = tmp_path / "junk.safetensors"
    junk.write_text("hello, I am not a model")
    line = fails("encode", "digits", "-m", junk, "--out", out, outputs=(out,))
    assert str(junk) in line and "not a readable discretae model" in line


def test_truncated_model_in_process(tmp_path, model):
    cut = tmp_path / "cut.safetensors"
    whole = model.read_bytes()
    cut.write_bytes(whole[: len(whole) // 2])
    out = tmp_path / "codes.npy"
    line = fails_in_process("encode", "digits", "-m", cut, "--out", out, outputs=(out,))
    assert "truncated" in line


def test_model_channels_do_not_match_data(tmp_path, model, out):
    rgb = png_folder(tmp_path / "rgb", mode="RGB")
    line = fails("encode", rgb, "-m", model, "--out", out, outputs=(out,))
    assert "1 channel" in line and "3 channel" in line


def test_codes_do_not_fit_model(tmp_path, model):
    np.save(tmp_path / "codes.npy", np.full(4, 7, np.uint8))  # the model has 3 codes
    recon = tmp_path / "recon"
    line = fails("decode", tmp_path / "codes.npy", "-m", model, "--out", recon, outputs=(recon,))
    assert "codes" in line and "[0, 2]" in line and "7" in line  # what fits, what was given


def test_codes_of_floats(tmp_path, model):
    np.save(tmp_path / "codes.npy", np.zeros(4, np.float32))
    recon = tmp_path / "recon.png"
    assert "dtype" in fails("decode", tmp_path / "codes.npy", "-m", model, "--out", recon,
                            outputs=(recon,))  # fmt: skip


# ------------------------------------------------------------------------ outputs
def test_unwritable_output_under_a_file(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("a regular file, not a folder")
    out = blocker / "model.safetensors"
    assert "cannot write" in fails("fit", "digits", "--out", out)
    assert blocker.read_text() == "a regular file, not a folder"


def test_unwritable_output_in_proc(model):
    out = Path("/proc/discretae-codes.npy")
    line = fails("encode", "digits", "-m", model, "--out", out, outputs=(out,))
    assert "cannot write" in line and str(out) in line


def test_unwritable_report_fails_before_work(tmp_path, model, monkeypatch):
    """The report path is checked before the model is loaded (and so before any image is
    read): both model loaders are replaced by one that records the call and stops."""
    from discretae.estimator.discrete_autoencoder import DiscreteAutoencoder
    from discretae.estimator.fitted import FittedModel

    loads = []

    def recording_load(cls, path, device="auto"):
        loads.append(path)
        raise DiscretaeError("stopped: the model was being loaded")

    for kind in (DiscreteAutoencoder, FittedModel):
        monkeypatch.setattr(kind, "load", classmethod(recording_load))
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    report = blocker / "report.json"
    line = fails("evaluate", "digits", "-m", model, "--report", report)
    assert "cannot write" in line and str(report) in line
    assert loads == []
    # the marker sees a load: with a report that can be written, loading comes next
    line = fails("evaluate", "digits", "-m", model, "--report", tmp_path / "report.json")
    assert "stopped: the model was being loaded" in line and len(loads) == 1


# ------------------------------------------------------------------------ options
@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_device_cuda_without_cuda(out):
    assert "CUDA" in fails("fit", "digits", "--device", "cuda", "--out", out, outputs=(out,))


def test_codes_zero(out):
    line = fails("fit", "digits", "--codes", 0, "--out", out, outputs=(out,), code=2)
    assert "--codes" in line


def test_unknown_model_kind(out):
    assert "--model" in fails("fit", "digits", "--model", "pca", "--out", out, code=2)


def test_bad_grid(out):
    line = fails("fit", "digits", "--latent", "grid", "--grid", "7by7", "--out", out,
                 outputs=(out,))  # fmt: skip
    assert "7by7" in line


# -------------------------------------------------------------------------- bugs
def test_unexpected_error_is_one_line(monkeypatch, out):
    """A bug still ends in one line (with a hint); DISCRETAE_DEBUG=1 shows the traceback."""
    import discretae.commands

    def broken(*args, **kwargs):
        raise RuntimeError("something broke")

    monkeypatch.setattr(discretae.commands, "fit", broken)
    line = fails("fit", "digits", "--out", out)
    assert "unexpected RuntimeError: something broke" in line and "DISCRETAE_DEBUG" in line
    monkeypatch.setenv("DISCRETAE_DEBUG", "1")
    r = runner.invoke(app, ["fit", "digits", "--out", str(out)])
    assert isinstance(r.exception, RuntimeError)
