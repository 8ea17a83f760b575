"""``discretae doctor``: versions, devices, and the nearest-code kernel checked on each device.

Every check is one small function returning one record ``{"device", "backend", "check",
"shape", "status", "figure", ...}`` with status ``pass``, ``fail`` or ``skip``:

- ``exact random`` / ``exact offset``: ``nearest_code(precision="exact")`` against a
  float64 direct-difference argmin (ties to the lowest index; a quarter of the codebook
  repeats another quarter, so there are ties), on standard normal data and on the same
  data shifted by 1000, where float32 cancellation decides nothing and the float64
  recheck decides everything;
- ``fast gap``: how far the fast mode's chosen distance exceeds the float64 minimum, as
  a share of the documented bound (twice the first pass's error bound);
- ``speed``: exact and fast against torch ``addmm`` + ``argmin`` at one realistic shape
  (best of a few calls each; one thread on a CPU); the check fails when exact takes more
  than ``SLOWER_MAX`` times as long (a sign that the fast path is not running).

On a CPU the backend is torch; the Triton kernel runs there under its interpreter only
when ``TRITON_INTERPRET=1`` was set before discretae was imported (tiny shapes, no timing).
"""

from __future__ import annotations

import os
import platform
import re
import time
from contextlib import nullcontext
from importlib import metadata
from pathlib import Path

import torch

from discretae._version import __version__
from discretae.commands.common import Callback
from discretae.core.errors import DiscretaeError
from discretae.kernels import nearest_code, triton_available
from discretae.kernels.torch_backend import error_bound

DISTRIBUTIONS = ("torch", "triton", "numpy", "Pillow", "constriction", "scikit-learn")
# (N, K, D) of the exactness checks; the CUDA list adds a split-codebook case (small N)
EXACT_SHAPES = {
    "cpu": [(4096, 256, 64)],
    "cuda": [(65536, 1024, 64), (64, 65536, 64)],
    "interpreter": [(256, 64, 32)],
}
TIMING_SHAPES = {"cpu": (16384, 512, 64), "cuda": (262144, 1024, 64)}
REPEATS = {"cpu": 5, "cuda": 10}
OFFSET = 1000.0  # float32 spacing at ||x||^2 ~ 6e7 is 4: first-pass values decide nothing
# exact may take at most this many times torch addmm + argmin: on a GPU the kernel should
# be several times faster; on one CPU thread it is about twice as fast (measured 0.51-0.57
# on a busy 2-core machine at TIMING_SHAPES["cpu"])
SLOWER_MAX = {"cpu": 2.0, "cuda": 2.0}
SEED = 0


class DoctorFailed(DiscretaeError):
    """One or more of ``doctor``'s checks failed (the command line exits 1)."""


def doctor(*, device: str = "all", callback: Callback = None) -> dict:
    """Check this installation: versions, devices, and the nearest-code kernel on each.

    ``device``: ``all`` (the CPU and every CUDA device), ``cpu``, ``cuda`` (every CUDA
    device) or ``cuda:N``. Returns ``{"discretae", "versions", "devices", "checks",
    "passed", "failed"}``; each check is a dict with device, backend, check, shape,
    status (pass, fail or skip), figure (one line for people) and its numbers. Raises
    nothing when a check fails: see :func:`require_passed`.
    """
    devices = _devices(device)
    plan = [step for dev in devices for step in _plan(dev)]
    checks = []
    for i, (check, dev, backend, shape) in enumerate(plan):
        if callback is not None:  # names the check now running
            name = check.__name__.removeprefix("check_").replace("_", " ")
            callback({"stage": f"{dev} {backend} {name}", "done": i, "total": len(plan)})
        checks.append(check(dev, backend, shape))
    failed = [c for c in checks if c["status"] == "fail"]
    return {
        "discretae": __version__,
        "versions": versions(),
        "devices": [describe(dev) for dev in devices],
        "checks": checks,
        "passed": not failed,
        "failed": len(failed),
    }


def require_passed(result: dict) -> None:
    """Raise :class:`DoctorFailed` naming the failed checks of a ``doctor`` result."""
    failed = [c for c in result["checks"] if c["status"] == "fail"]
    if failed:
        names = "; ".join(f"{c['device']} {c['backend']} {c['check']}" for c in failed)
        raise DoctorFailed(f"{len(failed)} of {len(result['checks'])} checks failed: {names}")


# ---------------------------------------------------------------- versions and devices
def versions() -> dict:
    """Python's version and each distribution's (None where not installed)."""
    out = {"python": platform.python_version(), "discretae": __version__}
    for dist in DISTRIBUTIONS:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _devices(device: str) -> list[torch.device]:
    cuda = [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    if device == "all":
        return [torch.device("cpu"), *cuda]
    if device == "cpu":
        return [torch.device("cpu")]
    m = re.fullmatch(r"cuda(?::(\d+))?", device)
    if m is None:
        raise DiscretaeError(f"device {device!r} is not one of all, cpu, cuda, cuda:N")
    if not cuda:
        raise DiscretaeError(f"device {device!r} was asked for but torch sees no CUDA device")
    if m.group(1) is None:
        return cuda
    if int(m.group(1)) >= len(cuda):
        raise DiscretaeError(f"device {device!r} does not exist: {len(cuda)} CUDA device(s)")
    return [cuda[int(m.group(1))]]


def interpreting() -> bool:
    """Whether the Triton kernel runs on CPU tensors here (its interpreter was asked for)."""
    return os.environ.get("TRITON_INTERPRET") == "1" and triton_available()


def backends(dev: torch.device) -> dict:
    """Which backend ``nearest_code`` picks on ``dev``, and what the Triton kernel does there."""
    if dev.type == "cuda":
        auto = "triton" if triton_available() else "torch"
        return {"auto": auto, "triton": "compiled" if auto == "triton" else "not available"}
    return {"auto": "torch", "triton": "interpreter" if interpreting() else "not on this device"}


def describe(dev: torch.device) -> dict:
    """Name, size and backends of one device."""
    if dev.type == "cuda":
        p = torch.cuda.get_device_properties(dev)
        info = {
            "name": p.name,
            "capability": f"{p.major}.{p.minor}",
            "memory_gib": round(p.total_memory / 2**30, 1),
            "multiprocessors": p.multi_processor_count,
        }
    else:
        info = {"name": _cpu_name(), "threads": torch.get_num_threads()}
    return {"device": str(dev), **info, "backends": backends(dev)}


def _cpu_name() -> str:
    try:
        names = re.findall(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
    except OSError:
        names = []
    if names:
        return f"{names[0].strip()} ({os.cpu_count()} logical CPUs)"
    return platform.processor() or platform.machine()


def _plan(dev: torch.device) -> list[tuple]:
    """(check, device, backend, shape) for every check on one device."""
    kind = dev.type
    runs = [(backends(dev)["auto"], kind)]
    if kind == "cpu" and interpreting():
        runs.append(("triton", "interpreter"))
    plan = []
    for backend, size in runs:
        for shape in EXACT_SHAPES[size]:
            plan += [(check_exact_random, dev, backend, shape)]
            plan += [(check_exact_offset, dev, backend, shape)]
        plan.append((check_fast_gap, dev, backend, EXACT_SHAPES[size][0]))
        if size == "interpreter":  # the interpreter's speed says nothing about a GPU's
            plan.append((skip_speed, dev, backend, None))
        else:
            plan.append((check_speed, dev, backend, TIMING_SHAPES[kind]))
    return plan


# ---------------------------------------------------------------- data and reference
def make_inputs(shape, dev: torch.device, offset: float = 0.0, ties: bool = True):
    """Seeded float32 x (N, D) and codebook (K, D) on ``dev``. With ``ties``, codes
    [K/2, 3K/4) repeat codes [0, K/4), so exact mode must send ties to the lower index."""
    n, k, d = shape
    g = torch.Generator().manual_seed(SEED + n + 7 * k + 13 * d)
    x = torch.randn(n, d, generator=g)
    c = torch.randn(k, d, generator=g)
    if ties:
        q = k // 4
        c[2 * q : 3 * q] = c[:q]
    return (x + offset).to(dev), (c + offset).to(dev)


def reference(x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 argmin of direct differences (first index at the minimum), and the minimum."""
    c64 = c.to(torch.float64)
    # float64 differences per step: 8 MiB on a CPU (cache-sized), 512 MiB on a GPU
    budget = 1 << (26 if x.is_cuda else 20)
    step = max(1, budget // (c.shape[0] * c.shape[1]))
    idx, best = [], []
    for xb in x.split(step):
        dist = (xb.to(torch.float64)[:, None] - c64[None]).square_().sum(-1)
        i = dist.argmin(1)
        idx.append(i)
        best.append(dist.gather(1, i[:, None])[:, 0])
    return torch.cat(idx), torch.cat(best)


def distances(x: torch.Tensor, c: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """float64 squared distance of each row of ``x`` to its chosen code ``c[idx]``."""
    return (x.to(torch.float64) - c.to(torch.float64)[idx]).square().sum(1)


def fast_bound(x: torch.Tensor, c: torch.Tensor, backend: str) -> torch.Tensor:
    """Per row, the documented bound on the fast mode's excess distance: twice the first
    pass's error bound (``nearest_code``'s docstring)."""
    x_norm = torch.linalg.vector_norm(x.to(torch.float32), dim=1)
    c_norm_max = float(torch.linalg.vector_norm(c.to(torch.float32), dim=1).max())
    d = x.shape[1]
    if backend == "triton":
        from discretae.kernels.triton_backend import first_pass_bound

        tf32 = x.is_cuda and x.dtype == torch.float32
        return 2.0 * first_pass_bound(x_norm, c_norm_max, d, tf32=tf32)
    return 2.0 * error_bound(x_norm, c_norm_max, d)


def _record(dev, backend, check, shape, passed: bool, figure: str, **numbers) -> dict:
    return {
        "device": str(dev),
        "backend": backend,
        "check": check,
        "shape": list(shape) if shape else None,
        "status": "pass" if passed else "fail",
        "figure": figure,
        **numbers,
    }


# ---------------------------------------------------------------- the checks
def _check_exact(dev, backend, shape, offset: float, name: str) -> dict:
    x, c = make_inputs(shape, dev, offset)
    start = time.perf_counter()
    want, _ = reference(x, c)
    got = nearest_code(x, c, precision="exact", backend=backend)[0]
    same = int((got == want).sum())
    n = len(want)
    figure = f"{same}/{n} rows match float64"
    if same < n:
        first = int((got != want).nonzero()[0, 0])
        figure += f" (first mismatch: row {first}, got {int(got[first])}, want {int(want[first])})"
    seconds = time.perf_counter() - start
    numbers = {"rows": n, "matching": same, "offset": offset, "seconds": seconds}
    return _record(dev, backend, name, shape, same == n, figure, **numbers)


def check_exact_random(dev, backend, shape) -> dict:
    """Exact mode on standard normal data: every index equals float64's."""
    return _check_exact(dev, backend, shape, 0.0, "exact random")


def check_exact_offset(dev, backend, shape) -> dict:
    """Exact mode on the same data shifted by OFFSET: float32 cancellation at its worst."""
    return _check_exact(dev, backend, shape, OFFSET, "exact offset")


def check_fast_gap(dev, backend, shape) -> dict:
    """Fast mode: the largest (chosen distance - float64 minimum) / bound over all rows."""
    x, c = make_inputs(shape, dev)
    start = time.perf_counter()
    want, best = reference(x, c)
    got = nearest_code(x, c, precision="fast", backend=backend)[0]
    gap = (distances(x, c, got) - best).clamp_(min=0.0)
    share = float((gap / fast_bound(x, c, backend).to(torch.float64)).max())
    agree = float((got == want).double().mean())
    figure = f"max gap {100 * share:.2f}% of the bound; {100 * agree:.2f}% of rows match float64"
    numbers = {"gap_over_bound": share, "agreement": agree}
    numbers["seconds"] = time.perf_counter() - start
    return _record(dev, backend, "fast gap", shape, share <= 1.0, figure, **numbers)


def check_speed(dev, backend, shape) -> dict:
    """Best time of exact, fast and torch addmm + argmin (round robin after a warm-up),
    on data without ties (tied rows are all decided again in float64). On a CPU all three
    run on one thread: with several, other work on the machine stalls every parallel
    region, and the many small steps of the chunked path suffer most (measured on a busy
    2-core machine: exact/addmm from 0.8 to 10 with two threads, 0.51-0.57 with one)."""
    n, k, d = shape
    start = time.perf_counter()
    x, c = make_inputs(shape, dev, ties=False)
    cc = (c * c).sum(1)
    calls = {
        "exact": lambda: nearest_code(x, c, precision="exact", backend=backend),
        "fast": lambda: nearest_code(x, c, precision="fast", backend=backend),
        "addmm_argmin": lambda: torch.addmm(cc, x, c.T, alpha=-2.0).argmin(1),
    }
    threads = torch.get_num_threads()
    if dev.type == "cpu":
        torch.set_num_threads(1)
    try:
        ms = _best_ms(calls, dev, REPEATS[dev.type])
    finally:
        torch.set_num_threads(threads)
    tflops = {name: 2 * n * k * d / t / 1e9 for name, t in ms.items()}
    ratio, most = ms["exact"] / ms["addmm_argmin"], SLOWER_MAX[dev.type]
    figure = (
        f"exact {ms['exact']:.3g} ms, fast {ms['fast']:.3g} ms, addmm+argmin "
        f"{ms['addmm_argmin']:.3g} ms: exact/addmm {ratio:.2f} (<= {most:g})"
    )
    if dev.type == "cpu":
        figure += ", one thread"
    if dev.type == "cuda":
        figure += f"; TFLOP/s exact {tflops['exact']:.0f}, fast {tflops['fast']:.0f}"
    numbers = {"ms": ms, "tflops": tflops, "exact_over_addmm": ratio}
    numbers["threads"] = 1 if dev.type == "cpu" else None
    numbers["seconds"] = time.perf_counter() - start
    return _record(dev, backend, "speed", shape, ratio <= most, figure, **numbers)


def skip_speed(dev, backend, shape) -> dict:
    record = _record(dev, backend, "speed", shape, True, "not timed under the interpreter")
    record["status"] = "skip"
    return record


def _best_ms(calls: dict, dev: torch.device, repeats: int) -> dict:
    """Fastest of ``repeats`` calls of each, in ms: the least disturbed by other work."""
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    times = {name: [] for name in calls}
    with torch.cuda.device(dev) if dev.type == "cuda" else nullcontext():
        for call in calls.values():  # warm-up: Triton compiles and tunes here
            call()
        for _ in range(repeats):
            for name, call in calls.items():
                sync()
                t0 = time.perf_counter()
                call()
                sync()
                times[name].append(time.perf_counter() - t0)
    return {name: 1e3 * min(t) for name, t in times.items()}
