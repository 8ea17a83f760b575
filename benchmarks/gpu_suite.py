"""Everything that needs a GPU, in one command: tests, doctor, kernel speed, VQ layer, fit.

    python benchmarks/gpu_suite.py --out gpu-suite/                 # on a CUDA machine
    python benchmarks/gpu_suite.py --device cpu --quick --out DIR   # the CI dry run

Steps, each a subprocess with its own timeout (seconds, full run on an H100/H200):

    pytest-gpu    pytest -m gpu on the test files that mark GPU tests            (240)
    doctor        discretae doctor --json (every device)                          (120)
    nearest-code  benchmarks/bench_nearest_code.py at its documented GPU shapes:  (300)
                  exact and fast, TFLOP/s and share of the device's peak, peak
                  extra memory, agreement with float64; checked against TARGETS
    vq-layer      one VQ layer forward + backward, discretae against              (120)
                  vector-quantize-pytorch (skipped when that is not installed)
    top-k         discretae.kernels.nearest_codes against float64, and its time   (120)
                  (skipped while the kernels have no top-k search)
    clustering    one Fashion-MNIST fit of the clustering recipe, timed, with      (300)
                  NMI/ACC (skipped when the dataset-fashion-mnist package is absent)
    torchrun      `discretae fit digits` under torchrun, one process per GPU on    (180)
                  nccl (two CPU processes on gloo with --device cpu)

``--device cpu --quick`` runs the same steps at tiny sizes on the CPU (the clustering
step fits 512 digits for one epoch), so the suite keeps working while no GPU is at hand.
Nothing needs the network: faiss and vector-quantize-pytorch are used only if installed.

Written to --out: suite.json (every step: status ok, failed or skipped, the reason,
seconds, its figures; the GPU targets with what was measured), suite.log (every step's
output), and each step's own files. Exit status 1 when a step failed; a skipped step or
a missed speed target is reported, not a failure.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))  # siblings: _common, bench_models, clustering

STEPS = ["pytest-gpu", "doctor", "nearest-code", "vq-layer", "top-k", "clustering", "torchrun"]
TIMEOUTS = {"pytest-gpu": 240, "doctor": 120, "nearest-code": 300, "vq-layer": 120,
            "top-k": 120, "clustering": 300, "torchrun": 180}  # fmt: skip
QUICK_TIMEOUT = 120
OPTIONAL = {"vector-quantize-pytorch": "vector_quantize_pytorch", "faiss-cpu": "faiss"}
# The GPU targets: (what, shape (N, K, D) or None for every shape, provider,
# figure, comparison, value)
TARGETS = [
    ("exact TFLOP/s", (1048576, 1024, 64), "discretae-exact", "tflops", ">=", 150.0),
    ("fast TFLOP/s", (1048576, 1024, 64), "discretae-fast", "tflops", ">=", 200.0),
    ("fast TFLOP/s, D >= 128", (65536, 1024, 256), "discretae-fast", "tflops", ">=", 300.0),
    ("fast TFLOP/s, D >= 128", (1048576, 16384, 128), "discretae-fast", "tflops", ">=", 300.0),
    ("exact agreement with float64", None, "discretae-exact", "agreement", ">=", 1.0),
    ("exact extra memory MiB", (65536, 65536, 64), "discretae-exact", "peak_extra_mb", "<",
     1024.0),
    ("fast extra memory MiB", (65536, 65536, 64), "discretae-fast", "peak_extra_mb", "<",
     1024.0),
]  # fmt: skip
QUICK_BENCH = ["--shapes", "2048x128x32", "--repeats", "1", "--sample", "256", "--no-memory"]
VQ_SHAPE = {"full": (1_048_576, 1024, 64), "quick": (4096, 64, 16)}
TOPK_SHAPE = {"full": (262144, 4096, 64, 8), "quick": (2048, 128, 32, 4)}


# ---------------------------------------------------------------- the steps (parent side)
def plan(name: str, a) -> list[str] | str:
    """The step's command line, or why it is skipped without running."""
    py = [sys.executable]
    if name == "pytest-gpu":
        files = gpu_test_files()
        if not files:
            return "no test file marks a test gpu"
        xml = a.out / "pytest-gpu.xml"
        return py + ["-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                     f"--junitxml={xml}", *files]  # fmt: skip
    if name == "doctor":
        return py + ["-m", "discretae.cli", "doctor", "--json", "--device", doctor_device(a)]
    if name == "nearest-code":
        cmd = py + [str(HERE / "bench_nearest_code.py"), "--device", a.device]
        return cmd + ["--out", str(a.out / "nearest_code")] + (QUICK_BENCH if a.quick else [])
    if name == "torchrun":
        return py + torchrun_args(a)
    if name == "vq-layer" and importlib.util.find_spec("vector_quantize_pytorch") is None:
        return "vector-quantize-pytorch is not installed (pip install vector-quantize-pytorch)"
    cmd = py + [__file__, "--step", name, "--device", a.device, "--out", str(a.out)]
    return cmd + (["--quick"] if a.quick else [])


def torchrun_args(a) -> list[str]:
    """Rendezvous on loopback only (as tests/test_distributed.py does); rank 0 prints JSON."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    epochs = "1" if a.quick else "3"
    return ["-m", "torch.distributed.run", "--nnodes=1", f"--nproc-per-node={a.nproc}",
            "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--local-addr=127.0.0.1",
            "-m", "discretae.cli", "fit", "digits", "--model", "vq", "--codes", "8",
            "--epochs", epochs, "--batch-size", "32", "--device", a.device,
            "--out", str(a.out / "torchrun.safetensors"), "--json"]  # fmt: skip


def step_env(name: str, a) -> dict:
    env = dict(os.environ)
    if name == "torchrun" and a.device == "cpu":
        env.update(OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")
    return env


def gpu_test_files() -> list[str]:
    tests = ROOT / "tests"
    return sorted(
        str(p.relative_to(ROOT)) for p in tests.glob("test_*.py") if "mark.gpu" in p.read_text()
    )


def doctor_device(a) -> str:
    return "all" if a.device == "cuda" else a.device


def collect(name: str, a, proc: subprocess.CompletedProcess) -> tuple[str, str | None, dict]:
    """(status, reason, figures) of a finished step."""
    if name == "pytest-gpu":
        return collect_pytest(a, proc)
    if name == "doctor":
        return collect_doctor(a, proc)
    if proc.returncode != 0:
        return "failed", failure(proc), {}
    if name == "torchrun":
        fit = json.loads(proc.stdout)
        figures = {"backend": "nccl" if a.device == "cuda" else "gloo", **fit}
        if fit.get("world_size") != a.nproc:
            return "failed", f"world size {fit.get('world_size')}, not {a.nproc}", figures
        return "ok", None, figures
    if name == "nearest-code":
        return "ok", None, summarize_bench(newest(a.out / "nearest_code"))
    figures = json.loads((a.out / f"{name}.json").read_text())
    if "skipped" in figures:
        return "skipped", figures["skipped"], figures
    return "ok", None, figures


def failure(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in (proc.stderr or "").strip().splitlines() if line.strip()]
    return f"exit {proc.returncode}" + (f": {lines[-1].strip()}" if lines else "")


def collect_pytest(a, proc) -> tuple[str, str | None, dict]:
    if proc.returncode == 5:
        return "skipped", "no gpu test collected", {}
    xml = a.out / "pytest-gpu.xml"
    if not xml.exists():
        return "failed", failure(proc), {}
    root = ET.parse(xml).getroot()
    suites = [root] if root.tag == "testsuite" else list(root)
    counts = {k: sum(int(s.get(k, 0)) for s in suites)
              for k in ("tests", "failures", "errors", "skipped")}  # fmt: skip
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    if proc.returncode != 0:
        return "failed", f"{counts['failures']} failed, {counts['errors']} errors", counts
    if counts["passed"] == 0:
        return "skipped", f"all {counts['skipped']} gpu tests skipped (no CUDA device)", counts
    return "ok", None, counts


def collect_doctor(a, proc) -> tuple[str, str | None, dict]:
    try:
        result = json.loads(proc.stdout)
    except json.JSONDecodeError:
        return "failed", failure(proc), {}
    (a.out / "doctor.json").write_text(json.dumps(result, indent=1) + "\n")
    if proc.returncode != 0:
        return "failed", failure(proc), result
    return "ok", None, result


def newest(folder: Path) -> dict:
    return json.loads(max(folder.glob("*.json"), key=lambda p: p.stat().st_mtime).read_text())


def summarize_bench(report: dict) -> dict:
    """The rows a reader wants, and the GPU targets checked against them."""
    keep = ("shape", "provider", "status", "ms_min", "tflops", "pct_fp32_peak",
            "pct_tf32_peak", "peak_extra_mb", "agreement")  # fmt: skip
    rows = [{k: r.get(k) for k in keep} for r in report["results"]]
    return {
        "device": report["device"],
        "peaks_tflops": report["peaks_tflops"],
        "rows": rows,
        "targets": check_targets(rows),
    }


def check_targets(rows: list[dict]) -> list[dict]:
    """Each target with what was measured; ``met`` is None where the shape did not run."""
    out = []
    for what, shape, provider, key, op, want in TARGETS:
        hits = [r for r in rows if r["provider"] == provider and r.get(key) is not None]
        hits = [r for r in hits if shape is None or tuple(r["shape"]) == shape]
        if not hits:
            out.append({"target": what, "shape": shape, "want": f"{op} {want:g}",
                        "got": None, "met": None})  # fmt: skip
            continue
        got = [r[key] for r in hits]
        worst = min(got) if op == ">=" else max(got)
        met = worst >= want if op == ">=" else worst < want
        out.append({"target": what, "shape": shape, "want": f"{op} {want:g}", "got": worst,
                    "met": met, "shapes_measured": len(hits)})  # fmt: skip
    return out


# ---------------------------------------------------------------- the steps (child side)
def step_vq_layer(a) -> dict:
    from bench_models import bench_vq_layer

    size = "quick" if a.quick else "full"
    return bench_vq_layer(2 if a.quick else 10, a.device, VQ_SHAPE[size])


def step_top_k(a) -> dict:
    import torch

    import discretae.kernels as kernels

    if not hasattr(kernels, "nearest_codes"):
        return {"skipped": "no top-k search in kernels yet"}
    n, k, d, top = TOPK_SHAPE["quick" if a.quick else "full"]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g).to(a.device)
    c = torch.randn(k, d, generator=g).to(a.device)
    out = kernels.nearest_codes(x, c, top)
    idx = out[0] if isinstance(out, tuple) else out
    rows = torch.arange(0, n, max(1, n // 2048), device=x.device)
    c64 = c.double()
    want = torch.cat(
        [  # float64 direct differences, 128 rows at a time; ties: lowest index
            (xb.double()[:, None] - c64[None]).square().sum(-1).sort(dim=1, stable=True).indices
            for xb in x[rows].split(128)
        ]
    )[:, :top]
    agree = float((idx[rows] == want).all(1).double().mean())
    seconds = best_time(lambda: kernels.nearest_codes(x, c, top), a.device)
    return {"shape_nkd": [n, k, d], "k": top, "rows_checked": len(rows),
            "agreement": agree, "ms": 1e3 * seconds,
            "tflops": 2 * n * k * d / seconds / 1e12}  # fmt: skip


def best_time(call, device: str, repeats: int = 5) -> float:
    import torch

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    call()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        call()
        sync()
        times.append(time.perf_counter() - t0)
    return min(times)


def step_clustering(a) -> dict:
    from clustering import estimator, load

    from discretae.core.errors import DiscretaeError
    from discretae.data.readers import fashion_mnist_folder
    from discretae.evaluation.metrics import clustering_scores

    if a.quick:
        name, (x, y) = "digits", load("digits")
        x, y = x[:512], y[:512]
    else:
        try:
            fashion_mnist_folder()
        except DiscretaeError as e:
            return {"skipped": str(e)}
        name, (x, y) = "fashion-mnist", load("fashion-mnist")
    est = estimator("recipe", seed=0, device=a.device)
    if a.quick:
        est.set_params(epochs=1)
    start = time.perf_counter()
    est.fit(x)  # no labels
    seconds = time.perf_counter() - start
    scores = clustering_scores(y, est.predict(x))
    return {"dataset": name, "n_images": int(len(x)), "epochs": len(est.history_),
            "fit_seconds": seconds, **{k: float(v) for k, v in scores.items()}}  # fmt: skip


CHILD_STEPS = {"vq-layer": step_vq_layer, "top-k": step_top_k, "clustering": step_clustering}


# ---------------------------------------------------------------- running
def run_step(name: str, a, log) -> dict:
    cmd = plan(name, a)
    start = time.perf_counter()
    entry = {"step": name, "command": None, "status": "skipped", "reason": None, "seconds": 0.0}
    entry["result"] = None
    if isinstance(cmd, str):
        entry["reason"] = cmd
        log.write(f"\n== {name}: skipped: {cmd}\n")
    else:
        entry["command"] = scrub(" ".join(cmd), a)
        timeout = QUICK_TIMEOUT if a.quick else TIMEOUTS[name]
        log.write(f"\n== {name} (timeout {timeout} s): {entry['command']}\n")
        log.flush()
        proc = run_bounded(cmd, step_env(name, a), timeout)
        if proc.returncode is None:
            entry.update(status="failed", reason=f"timed out after {timeout} s")
        else:
            try:
                status, reason, figures = collect(name, a, proc)
            except (OSError, ValueError, KeyError) as e:  # no or unreadable figures
                status, reason, figures = "failed", f"could not read its results: {e!r}", None
            entry.update(status=status, reason=reason, result=figures)
        log.write(scrub(proc.stdout + proc.stderr, a))
    entry["seconds"] = time.perf_counter() - start
    log.write(f"-> {entry['status']}" + (f": {entry['reason']}" if entry["reason"] else ""))
    log.write(f" ({entry['seconds']:.1f} s)\n")
    log.flush()
    return entry


def run_bounded(cmd: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
    """Run ``cmd`` in its own process group; on timeout kill the whole group (torchrun's
    workers, pytest's children) and return returncode None."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return subprocess.CompletedProcess(cmd, None, out, err)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def scrub(text: str, a) -> str:
    """``text`` without this machine's paths: the interpreter, --out and the checkout."""
    for path, shown in ((sys.executable, "python"), (str(a.out), "OUT"), (f"{ROOT}{os.sep}", "")):
        text = text.replace(path, shown)
    return text


def write_report(report: dict, a, started: float) -> None:
    """suite.json with the steps so far, their targets, and ok (no step failed); paths
    scrubbed."""
    report["targets"] = next(
        (s["result"]["targets"] for s in report["steps"] if s["step"] == "nearest-code"
         and s["status"] == "ok"), []
    )  # fmt: skip
    report["seconds"] = time.perf_counter() - started
    report["ok"] = all(s["status"] != "failed" for s in report["steps"])
    (a.out / "suite.json").write_text(scrub(json.dumps(report, indent=1), a) + "\n")


def optional_packages() -> dict:
    from importlib import metadata

    out = {}
    for dist, module in OPTIONAL.items():
        found = importlib.util.find_spec(module) is not None
        out[dist] = metadata.version(dist) if found else "not installed"
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a dry run of every step")
    ap.add_argument("--out", type=Path, required=True, help="folder for suite.json and the rest")
    ap.add_argument("--steps", default=",".join(STEPS), help="comma-separated subset of steps")
    ap.add_argument("--step", choices=list(CHILD_STEPS), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    a.out = a.out.resolve()  # the steps run in the repository's root
    a.out.mkdir(parents=True, exist_ok=True)
    if a.step:  # one step in this process: its figures go to OUT/STEP.json
        figures = CHILD_STEPS[a.step](a)
        (a.out / f"{a.step}.json").write_text(json.dumps(figures, indent=1) + "\n")
        print(json.dumps(figures))
        return 0
    steps = [s.strip() for s in a.steps.split(",") if s.strip()]
    unknown = sorted(set(steps) - set(STEPS))
    if unknown:
        raise SystemExit(f"unknown steps {unknown}; expected some of {STEPS}")
    return run_suite(a, steps)


def run_suite(a, steps: list[str]) -> int:
    import torch
    from _common import device_name, versions

    if a.device not in ("cuda", "cpu"):
        raise SystemExit(f"--device wants cuda or cpu, got {a.device!r}")
    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda given but torch sees no CUDA device (try --device cpu)")
    a.nproc = torch.cuda.device_count() if a.device == "cuda" else 2  # torchrun's processes
    started = time.perf_counter()
    report = {
        "suite": "gpu",
        "device": device_name(a.device),
        "device_type": a.device,
        "quick": a.quick,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions("discretae", "torch", "triton", "numpy"),
        "optional": optional_packages(),
        "steps": [],
    }
    with open(a.out / "suite.log", "w") as log:
        log.write(f"{report['device']} ({a.device}{', quick' if a.quick else ''})\n")
        for dist, version in report["optional"].items():
            log.write(f"{dist}: {version}\n")
            if version == "not installed":
                print(f"{dist} is not installed: the steps that use it skip it")
        for name in steps:
            entry = run_step(name, a, log)
            report["steps"].append(entry)
            why = f": {entry['reason']}" if entry["reason"] else ""
            print(f"{name:13s} {entry['status']:8s} {entry['seconds']:6.1f} s{why}", flush=True)
            log.flush()
            write_report(report, a, started)  # after every step: a cut-off run keeps them
    write_report(report, a, started)
    for t in report["targets"]:
        met = {True: "met", False: "MISSED", None: "not measured"}[t["met"]]
        got = "-" if t["got"] is None else f"{t['got']:.4g}"
        print(f"target {t['target']} {t['shape'] or 'all shapes'}: {got} ({t['want']}) {met}")
    print(f"wrote {a.out / 'suite.json'} and suite.log in {report['seconds']:.0f} s")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
