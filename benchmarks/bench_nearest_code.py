"""Nearest-code search: discretae against torch, vector-quantize-pytorch and faiss.

    python benchmarks/bench_nearest_code.py                      # CPU, default shapes
    python benchmarks/bench_nearest_code.py --device cuda
    python benchmarks/bench_nearest_code.py --shapes 65536x1024x64 --repeats 7

Every provider gets the same float32 x (N, D) and codebook (K, D), drawn from a standard
normal, and returns one index per row. Providers run round-robin (one call each, then
the next repeat) after one warm-up call each, so a burst of load on a shared machine hits
all of them alike. Reported per provider and shape:

- ms: median and min over the repeats; TFLOP/s = 2 N K D / min time;
- percent of the GPU's dense fp32 and TF32 peak (n/a on CPU);
- peak extra memory: CUDA max_memory_allocated growth during one call; on CPU (Linux)
  the peak resident memory during one call above the resident memory before it, in a
  fresh process after a small warm-up call;
- agreement: share of sampled rows whose index equals a float64 direct-difference argmin;
- ratios the targets name: discretae exact / faiss and vector-quantize-pytorch / exact.

Providers that would build an N x K float32 matrix above --mem-cap-gb are skipped.
The table is printed and written as JSON under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from _common import device_name, versions, write_report  # sibling: scripts run as benchmarks/X.py

from discretae import nearest_code

GPU_SHAPES = [
    (65536, 512, 64),
    (65536, 1024, 256),
    (65536, 8192, 64),
    (65536, 65536, 64),
    (1048576, 1024, 64),
    (1048576, 16384, 128),
]
CPU_SHAPES = [(16384, 512, 64), (65536, 1024, 64), (65536, 8192, 64)]
# CPU targets: exact <= 1.25 x faiss and >= 5 x faster than vector-quantize-pytorch
CPU_TARGET_SHAPES = [(65536, 1024, 64), (65536, 8192, 64)]
EXACT_OVER_FAISS_MAX = 1.25
VQ_OVER_EXACT_MIN = 5.0
# dense peaks in TFLOP/s (vendor data sheets); the first name found in the device name wins
GPU_PEAKS = [
    ("H200", {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4}),
    ("H100 PCIe", {"fp32": 51.2, "tf32": 378.0, "bf16": 756.0}),
    ("H100 NVL", {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5}),
    ("H100", {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4}),
]
PROVIDERS = [
    "discretae-exact",
    "discretae-fast",
    "torch-addmm",
    "torch-cdist",
    "vqtorch",
    "faiss",
]
FULL_MATRIX = {"torch-addmm", "torch-cdist", "vqtorch"}


def setup_provider(name: str, x: torch.Tensor, c: torch.Tensor):
    """Build what the provider needs outside the timed call; return call() -> (N,) indices."""
    if name.startswith("discretae-"):
        precision = name.split("-")[1]
        return lambda: nearest_code(x, c, precision=precision)[0]
    if name == "torch-addmm":
        return lambda: torch.addmm((c * c).sum(1), x, c.T, alpha=-2.0).argmin(1)
    if name == "torch-cdist":
        return lambda: torch.cdist(x, c).argmin(1)
    if name == "vqtorch":
        from vector_quantize_pytorch import VectorQuantize

        vq = VectorQuantize(dim=c.shape[1], codebook_size=c.shape[0]).to(x.device).eval()
        vq._codebook.embed.data.copy_(c[None])
        xb = x[None]

        def call_vq():
            with torch.no_grad():
                return vq(xb)[1][0]

        return call_vq
    if name == "faiss":
        import faiss

        faiss.omp_set_num_threads(torch.get_num_threads())
        index = faiss.IndexFlatL2(c.shape[1])
        index.add(c.numpy())
        xn = x.numpy()
        return lambda: torch.from_numpy(index.search(xn, 1)[1][:, 0])
    raise ValueError(f"unknown provider {name!r}; expected one of {PROVIDERS}")


def unavailable(name: str, device: str, n: int, k: int, cap_gb: float) -> str | None:
    """Why the provider cannot run here, or None."""
    module = {"vqtorch": "vector_quantize_pytorch", "faiss": "faiss"}.get(name)
    if module is not None:
        try:
            __import__(module)
        except ImportError:
            return f"{module} not importable"
    if name == "faiss" and device != "cpu":
        return "faiss-cpu runs on the host; see the CPU run"
    if name in FULL_MATRIX and n * k * 4 > cap_gb * 1e9:
        return f"N x K matrix is {n * k * 4 / 1e9:.1f} GB > cap {cap_gb:g} GB"
    return None


def make_inputs(n: int, k: int, d: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator(device=device).manual_seed(n + 7 * k + 13 * d)
    x = torch.randn(n, d, generator=g, device=device)
    c = torch.randn(k, d, generator=g, device=device)
    return x, c


def reference_indices(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """float64 argmin of direct differences for the rows of x (small N)."""
    c64 = c.double()
    step = max(1, (1 << 24) // (c.shape[0] * c.shape[1]))
    out = [((xb.double()[:, None] - c64[None]) ** 2).sum(-1).argmin(1) for xb in x.split(step)]
    return torch.cat(out)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(call, device: str) -> tuple[float, torch.Tensor]:
    sync(device)
    t0 = time.perf_counter()
    out = call()
    sync(device)
    return time.perf_counter() - t0, out


def cuda_peak_extra_mb(call) -> float:
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    call()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def _status_mb(field: str) -> float:
    """VmRSS / VmHWM of this process from Linux procfs, in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise OSError(f"{field} not in /proc/self/status")


def probe_memory(name: str, shape: tuple[int, int, int]) -> float:
    """Peak RSS growth (MiB) during one call on CPU; run in a fresh process.

    Linux resets the RSS high-water mark when "5" is written to clear_refs, so VmHWM
    after the call minus VmRSS before it is the call's peak extra resident memory.
    """
    x, c = make_inputs(*shape, "cpu")
    setup_provider(name, x[:256].clone(), c)()  # load libraries, thread pools, kernels
    call = setup_provider(name, x, c)
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_mb("VmRSS")
    call()
    return _status_mb("VmHWM") - before


def cpu_peak_extra_mb(name: str, shape: tuple[int, int, int]) -> float | None:
    cmd = [sys.executable, __file__, "--probe-memory", name, "--shapes", "x".join(map(str, shape))]
    cmd += ["--threads", str(torch.get_num_threads())]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        print(f"  memory probe for {name} failed: {res.stderr.strip()[-300:]}", file=sys.stderr)
        return None
    return float(res.stdout.strip().splitlines()[-1])


def gpu_peaks(name: str) -> dict | None:
    for key, peaks in GPU_PEAKS:
        if key.lower() in name.lower():
            return peaks
    return None


def bench_shape(shape, providers, args, peaks):
    n, k, d = shape
    x, c = make_inputs(n, k, d, args.device)
    sample = torch.randperm(n, generator=torch.Generator().manual_seed(0))[: args.sample]
    want = reference_indices(x[sample.to(x.device)], c).cpu()
    rows, calls = [], {}
    for name in providers:
        why = unavailable(name, args.device, n, k, args.mem_cap_gb)
        row = {"shape": [n, k, d], "provider": name, "status": "ok" if why is None else why}
        rows.append(row)
        if why is not None:
            continue
        calls[name] = setup_provider(name, x, c)
        _, idx = timed(calls[name], args.device)  # warm-up
        row["agreement"] = float((idx.cpu()[sample] == want).double().mean())
        row["times_s"] = []
        del idx
    for _ in range(args.repeats):
        for row in rows:
            if row["provider"] in calls:
                row["times_s"].append(timed(calls[row["provider"]], args.device)[0])
    for row in rows:
        name = row["provider"]
        if name not in calls:
            continue
        ts = row.pop("times_s")
        row["ms_median"], row["ms_min"] = 1e3 * statistics.median(ts), 1e3 * min(ts)
        row["repeats"] = len(ts)
        row["tflops"] = 2 * n * k * d / min(ts) / 1e12
        for p in ("fp32", "tf32"):
            row[f"pct_{p}_peak"] = 100 * row["tflops"] / peaks[p] if peaks else None
        if args.no_memory:
            row["peak_extra_mb"] = None
        elif args.device.startswith("cuda"):
            row["peak_extra_mb"] = cuda_peak_extra_mb(calls[name])
        else:
            row["peak_extra_mb"] = cpu_peak_extra_mb(name, shape)
    return rows


def ratios(rows) -> dict:
    t = {r["provider"]: r for r in rows if "ms_min" in r}
    out = {}
    pairs = {
        "exact_over_faiss": ("discretae-exact", "faiss"),
        "fast_over_faiss": ("discretae-fast", "faiss"),
        "vqtorch_over_exact": ("vqtorch", "discretae-exact"),
        "addmm_over_exact": ("torch-addmm", "discretae-exact"),
    }
    for key, (a, b) in pairs.items():
        if a in t and b in t:
            out[key] = {s: t[a][f"ms_{s}"] / t[b][f"ms_{s}"] for s in ("min", "median")}
    return out


def fmt(v, spec):
    return "n/a" if v is None else format(v, spec)


def print_table(rows, on_gpu: bool) -> None:
    head = f"{'N x K x D':>20} {'provider':>16} {'ms med':>9} {'ms min':>9} {'TFLOP/s':>8}"
    head += f" {'%fp32':>6} {'%tf32':>6}" if on_gpu else f" {'%peak':>6}"
    print(head + f" {'extra MB':>9} {'agree %':>8}")
    for r in rows:
        shape = "x".join(map(str, r["shape"]))
        if r["status"] != "ok":
            print(f"{shape:>20} {r['provider']:>16}  skipped: {r['status']}")
            continue
        line = f"{shape:>20} {r['provider']:>16} {r['ms_median']:9.1f} {r['ms_min']:9.1f}"
        line += f" {r['tflops']:8.3f}"
        if on_gpu:
            line += f" {fmt(r['pct_fp32_peak'], '6.1f')} {fmt(r['pct_tf32_peak'], '6.1f')}"
        else:
            line += f" {'n/a':>6}"
        line += f" {fmt(r['peak_extra_mb'], '9.1f')} {100 * r['agreement']:8.3f}"
        print(line)


def parse_shapes(text: str) -> list[tuple[int, int, int]]:
    shapes = []
    for part in text.split(","):
        dims = part.lower().split("x")
        if len(dims) != 3 or not all(s.strip().isdigit() for s in dims):
            raise SystemExit(f"--shapes wants NxKxD[,NxKxD...], got {part!r}")
        shapes.append(tuple(int(s) for s in dims))
    return shapes


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default cpu)")
    ap.add_argument("--shapes", help="NxKxD[,NxKxD...]; default depends on the device")
    ap.add_argument("--repeats", type=int, default=5, help="timed calls after one warm-up")
    ap.add_argument("--threads", type=int, help="torch (and faiss) CPU threads; default: torch's")
    ap.add_argument("--providers", default=",".join(PROVIDERS), help="comma-separated")
    ap.add_argument("--sample", type=int, default=4096, help="rows checked against float64")
    ap.add_argument("--mem-cap-gb", type=float, default=8.0, help="skip larger N x K matrices")
    ap.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"), help="JSON folder")
    ap.add_argument("--probe-memory", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    on_gpu = args.device.startswith("cuda")
    shapes = parse_shapes(args.shapes) if args.shapes else (GPU_SHAPES if on_gpu else CPU_SHAPES)
    if args.probe_memory:
        print(probe_memory(args.probe_memory, shapes[0]))
        return 0
    if on_gpu and not torch.cuda.is_available():
        raise SystemExit("--device cuda given but torch sees no CUDA device")
    providers = [p.strip() for p in args.providers.split(",") if p.strip()]
    for p in providers:
        if p not in PROVIDERS:
            raise SystemExit(f"unknown provider {p!r}; expected some of {PROVIDERS}")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    name = device_name(args.device)
    peaks = gpu_peaks(name) if on_gpu else None
    now = dt.datetime.now(dt.timezone.utc)
    print(f"{name}, torch threads {torch.get_num_threads()}, {now:%Y-%m-%d %H:%M} UTC")
    rows, shape_ratios = [], []
    for shape in shapes:
        shape_rows = bench_shape(shape, providers, args, peaks)
        rows += shape_rows
        shape_ratios.append({"shape": list(shape), **ratios(shape_rows)})
        print_table(shape_rows, on_gpu)
        for key, val in shape_ratios[-1].items():
            if key != "shape":
                print(f"{'':>20} {key}: {val['min']:.2f} (min), {val['median']:.2f} (median)")
        print(flush=True)
    targets = []
    if not on_gpu:
        for r in shape_ratios:
            if tuple(r["shape"]) in CPU_TARGET_SHAPES:
                ef = r.get("exact_over_faiss", {}).get("min")
                ve = r.get("vqtorch_over_exact", {}).get("min")
                targets.append(
                    {
                        "shape": r["shape"],
                        "exact_over_faiss": ef,
                        "exact_over_faiss_met": None if ef is None else ef <= EXACT_OVER_FAISS_MAX,
                        "vqtorch_over_exact": ve,
                        "vqtorch_over_exact_met": None if ve is None else ve >= VQ_OVER_EXACT_MIN,
                    }
                )
        for t in targets:
            print(
                f"target {t['shape']}: exact/faiss {fmt(t['exact_over_faiss'], '.2f')} (<= 1.25)"
                f", vqtorch/exact {fmt(t['vqtorch_over_exact'], '.1f')} (>= 5)"
            )
    report = {
        "benchmark": "nearest_code",
        "device": name,
        "device_type": "cuda" if on_gpu else "cpu",
        "date": now.isoformat(timespec="seconds"),
        "threads": torch.get_num_threads(),
        "versions": versions(
            "torch", "triton", "faiss-cpu", "vector-quantize-pytorch", "numpy", "discretae"
        ),
        "peaks_tflops": peaks,
        "repeats": args.repeats,
        "agreement_sample_rows": args.sample,
        "mem_cap_gb": args.mem_cap_gb,
        "memory_method": "cuda max_memory_allocated growth during one call"
        if on_gpu
        else "VmHWM after one call minus VmRSS before it (high-water mark reset via "
        "clear_refs), in a fresh process after a small warm-up call",
        "results": rows,
        "ratios": shape_ratios,
        "cpu_targets": targets,
    }
    kind = "cuda" if on_gpu else f"cpu-{torch.get_num_threads()}t"
    write_report(report, args.out, f"nearest_code-{kind}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
