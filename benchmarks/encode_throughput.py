"""Throughput and peak memory of `discretae encode` on a large folder of small PNGs, on CPU.

    python benchmarks/encode_throughput.py                 # 100k images, made or reused
    python benchmarks/encode_throughput.py --n 200000 --repeats 3 --workers 1

The folder holds N 28x28 gray PNGs: Fashion-MNIST's 70k images (from the Debian
package, when installed) and their mirror images, or scikit-learn's digits upsampled
and shifted. It is made once under the temp dir and reused while its marker says it is
complete (``--fresh`` makes it again). A tiny model (gumbel, width 8) is fitted on
5000 of them.

Measured in the same run, alternating, ``--repeats`` times each:

- the ceiling: Pillow decode only (open, decode, to a numpy array) of every file, in
  as many worker processes as encode uses;
- `discretae encode FOLDER --workers W` as a real subprocess, end to end (start-up,
  folder listing, model load, streaming): images per second, the peak resident memory of
  its largest process (``ru_maxrss`` of a wrapper's children), and the peak of the
  summed proportional set size (PSS) of its whole process tree, sampled from /proc;
- `discretae --version`, the interpreter and import part of encode's start-up.

Targets (the issue's): encode >= 60% of the ceiling; peak memory < 1.5 GB. The machine is
shared, so the load average before and after is recorded with the figures.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from _common import cpu_header  # sibling: scripts run as benchmarks/X.py
from PIL import Image

TARGET_RATIO, TARGET_MEMORY_GB = 0.60, 1.5
SIDE = 28
# runs the encode command as its child, then reports the largest child's peak RSS
WRAPPER = """
import json, resource, subprocess, sys, time
t = time.perf_counter()
r = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, text=True)
seconds = time.perf_counter() - t
maxrss_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
report = json.loads(r.stdout) if r.returncode == 0 else None
out = {"rc": r.returncode, "seconds": seconds, "maxrss_kb": maxrss_kb, "report": report}
print(json.dumps(out))
"""


# ------------------------------------------------------------------------------ folder
def source_images(n: int) -> tuple[np.ndarray, str]:
    """n distinct 28x28 uint8 images and a description of where they come from."""
    try:
        from discretae.data.readers import fashion_mnist_folder, idx_image_files, read_idx

        files = idx_image_files(fashion_mnist_folder(), None)
        base = np.concatenate([read_idx(f) for f in files])
        what = "Fashion-MNIST (train + test) and their mirror images"
    except Exception:
        from sklearn.datasets import load_digits

        digits = (load_digits().images * (255 / 16)).astype(np.uint8)
        big = np.asarray(
            [np.asarray(Image.fromarray(d).resize((SIDE, SIDE), Image.BILINEAR)) for d in digits]
        )
        rng = np.random.default_rng(0)
        shifts = rng.integers(-3, 4, size=(70_000, 2))
        base = np.stack(
            [np.roll(big[i % len(big)], tuple(d), (0, 1)) for i, d in enumerate(shifts)]
        )
        what = "scikit-learn digits upsampled to 28x28, shifted, and mirrored"
    images = np.concatenate([base, base[:, :, ::-1]])
    while len(images) < n:
        images = np.concatenate([images, images[:, ::-1]])
    return np.ascontiguousarray(images[:n]), what


def _write_pngs(job: tuple[str, int, np.ndarray]) -> int:
    folder, start, block = job
    for i, im in enumerate(block):
        Image.fromarray(im).save(os.path.join(folder, f"{start + i:07d}.png"))
    return len(block)


def make_folder(folder: Path, n: int, fresh: bool, processes: int) -> dict:
    marker = folder / ".complete.json"
    if not fresh and marker.is_file():
        info = json.loads(marker.read_text())
        if info.get("n") == n:
            return {**info, "reused": True}
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    images, what = source_images(n)
    t = time.perf_counter()
    jobs = [(str(folder), s, images[s : s + 2000]) for s in range(0, n, 2000)]
    with mp.get_context("fork").Pool(processes) as pool:
        assert sum(pool.imap_unordered(_write_pngs, jobs)) == n
    total = sum(p.stat().st_size for p in folder.glob("*.png"))
    info = {"n": n, "source": what, "bytes": total, "made_seconds": time.perf_counter() - t}
    marker.write_text(json.dumps(info))
    return {**info, "reused": False}


# ---------------------------------------------------------------------------- ceiling
def _decode(paths: list[str]) -> int:
    for p in paths:
        with Image.open(p) as im:
            np.asarray(im)  # decodes the pixels into an array
    return len(paths)


def decode_only(paths: list[str], workers: int) -> float:
    """Seconds to decode every file in ``workers`` processes (pool start included)."""
    chunks = [paths[i : i + 500] for i in range(0, len(paths), 500)]
    t = time.perf_counter()
    if workers == 0:
        done = sum(map(_decode, chunks))
    else:
        with mp.get_context("fork").Pool(workers) as pool:
            done = sum(pool.imap_unordered(_decode, chunks))
    assert done == len(paths)
    return time.perf_counter() - t


# ----------------------------------------------------------------------------- encode
def _tree(root: int) -> list[int]:
    """root and its descendants, from /proc/PID/task/TID/children (cheap to read)."""
    tree, i = [root], 0
    while i < len(tree):
        try:
            for tid in os.listdir(f"/proc/{tree[i]}/task"):
                with open(f"/proc/{tree[i]}/task/{tid}/children") as f:
                    tree += [int(c) for c in f.read().split()]
        except OSError:  # gone, or a kernel without the children file
            pass
        i += 1
    return tree


def _memory_kb(pid: int) -> tuple[int, int]:
    """(Pss, Rss) of one process in kB, 0 when it is gone."""
    values = {"Pss:": 0, "Rss:": 0}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key = line.split(None, 1)[0]
                if key in values:
                    values[key] = int(line.split()[1])
    except OSError:
        pass
    return values["Pss:"], values["Rss:"]


def run_encode(folder: Path, model: Path, out: Path, workers: int, batch: int) -> dict:
    cmd = [sys.executable, "-c", WRAPPER, sys.executable, "-m", "discretae.cli", "encode"]
    cmd += [str(folder), "-m", str(model), "--out", str(out), "--workers", str(workers)]
    cmd += ["--batch-size", str(batch), "--device", "cpu", "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = {"pss_kb": 0, "rss_sum_kb": 0, "processes": 0}

    def sample() -> None:
        while proc.poll() is None:
            tree = _tree(proc.pid)[1:]  # the encode process and its workers, not the wrapper
            mem = [_memory_kb(p) for p in tree]
            peak["pss_kb"] = max(peak["pss_kb"], sum(m[0] for m in mem))
            peak["rss_sum_kb"] = max(peak["rss_sum_kb"], sum(m[1] for m in mem))
            peak["processes"] = max(peak["processes"], len(tree))
            time.sleep(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = proc.communicate()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"encode wrapper failed: {stderr}")
    report = json.loads(stdout.strip().splitlines()[-1])
    if report["rc"] != 0:
        raise SystemExit(f"discretae encode failed ({report['rc']}): {stderr}")
    timing = report["report"]
    return {
        "seconds": report["seconds"],
        "load_seconds": timing["load_seconds"],
        "stream_seconds": timing["encode_seconds"],
        "startup_seconds": report["seconds"] - timing["load_seconds"] - timing["encode_seconds"],
        "max_rss_mb": report["maxrss_kb"] / 1024,
        "peak_tree_pss_mb": peak["pss_kb"] / 1024,
        "peak_tree_rss_sum_mb": peak["rss_sum_kb"] / 1024,
        "processes": peak["processes"],
    }


def imports_only() -> float:
    """Seconds for `discretae --version`: the interpreter and the CLI's imports."""
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "discretae.cli", "--version"], check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    return time.perf_counter() - t


def fit_tiny_model(folder: Path, path: Path) -> None:
    from discretae import DiscreteAutoencoder

    names = sorted(folder.glob("*.png"))[:5000]
    x = np.stack([np.asarray(Image.open(p)) for p in names])
    est = DiscreteAutoencoder(model="gumbel", width=8, epochs=1, batch_size=256, device="cpu")
    est.fit(x).save(path)


# ------------------------------------------------------------------------------ report
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000, help="images in the folder (>= 100000)")
    ap.add_argument("--folder", type=Path, default=None, help="where the PNGs live")
    ap.add_argument("--fresh", action="store_true", help="make the folder again")
    ap.add_argument("--workers", type=int, default=None, help="decoding processes")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="JSON path")
    args = ap.parse_args(argv)
    cpus = os.cpu_count() or 1
    # what `discretae encode` picks by itself for a folder this size
    workers = args.workers if args.workers is not None else max(1, min(4, cpus - 1))
    folder = args.folder or Path(tempfile.gettempdir()) / f"discretae-encode-bench-{args.n}"
    load_before = os.getloadavg()
    info = make_folder(folder, args.n, args.fresh, processes=cpus)
    print(f"folder {folder}: {info['n']} PNGs, {info['bytes'] / 2**20:.1f} MiB "
          f"({'reused' if info['reused'] else 'made'}; {info['source']})")  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="discretae-encode-bench-"))
    model = work / "model.safetensors"
    fit_tiny_model(folder, model)
    paths = sorted(str(p) for p in folder.glob("*.png"))
    # warm-up: every file once (page and dentry caches; the first full pass ran at half
    # the speed of the later ones), and the pool start
    decode_only(paths, workers)
    runs = []
    for r in range(args.repeats):
        ceiling = decode_only(paths, workers)
        enc = run_encode(folder, model, work / "codes.npy", workers, args.batch_size)
        codes = np.load(work / "codes.npy", mmap_mode="r")
        assert codes.shape[0] == len(paths), codes.shape
        runs.append({"repeat": r, "decode_only_seconds": ceiling, **enc})
        runs[-1]["imports_seconds"] = imports_only()
        print(f"repeat {r}: decode-only {len(paths) / ceiling:,.0f} img/s, encode "
              f"{len(paths) / enc['seconds']:,.0f} img/s, peak tree PSS "
              f"{enc['peak_tree_pss_mb']:.0f} MB, max RSS {enc['max_rss_mb']:.0f} MB")  # fmt: skip
    n = len(paths)
    ceiling_ips = n / statistics.median(r["decode_only_seconds"] for r in runs)
    encode_ips = n / statistics.median(r["seconds"] for r in runs)
    stream_ips = n / statistics.median(r["stream_seconds"] for r in runs)
    peak_mb = max(max(r["peak_tree_pss_mb"], r["max_rss_mb"]) for r in runs)
    ratio = encode_ips / ceiling_ips
    summary = {
        "decode_only_images_per_s": ceiling_ips,
        "encode_images_per_s": encode_ips,
        "encode_over_decode_only": ratio,
        "streaming_images_per_s": stream_ips,
        "streaming_over_decode_only": stream_ips / ceiling_ips,
        "median_seconds": {
            k: statistics.median(r[k] for r in runs)
            for k in ("decode_only_seconds", "seconds", "startup_seconds", "imports_seconds")
            + ("load_seconds", "stream_seconds")
        },
        "peak_memory_mb": peak_mb,
        "meets_throughput_target": ratio >= TARGET_RATIO,
        "meets_memory_target": peak_mb < TARGET_MEMORY_GB * 1000,
    }
    result = {
        **cpu_header("encode-throughput", "torch", "numpy", "pillow", "discretae"),
        "load_average_before": list(load_before),
        "load_average_after": list(os.getloadavg()),
        "data": {k: info[k] for k in ("n", "source", "bytes")} | {"image": [SIDE, SIDE]},
        "settings": {
            "workers": workers,
            "batch_size": args.batch_size,
            "repeats": args.repeats,
            "model": "gumbel, 10 codes, width 8, fitted 1 epoch on 5000 of the images",
            "encode": "discretae encode FOLDER --workers W --device cpu: end to end, and its "
            "streaming phase (decode, encode, write; the command's encode_seconds)",
            "decode_only": "Pillow open + decode to numpy, W processes",
            "imports": "discretae --version: interpreter start and the CLI's imports",
            # encode sets its own torch threads (one per core its workers leave free)
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        },
        "targets": {"encode_over_decode_only": TARGET_RATIO, "peak_memory_gb": TARGET_MEMORY_GB},
        "summary": summary,
        "runs": runs,
    }
    print()
    print(f"{'':28}{'img/s':>10}{'ratio':>8}{'peak MB':>9}")
    print(f"{'decode only (ceiling)':28}{ceiling_ips:>10,.0f}{1.0:>8.2f}{'':>9}")
    print(f"{'discretae encode, end to end':28}{encode_ips:>10,.0f}{ratio:>8.2f}{peak_mb:>9.0f}")
    print(f"{'  its streaming phase':28}{stream_ips:>10,.0f}{stream_ips / ceiling_ips:>8.2f}")
    sec = summary["median_seconds"]
    print(f"encode seconds: {sec['startup_seconds']:.1f} start-up and exit (`discretae "
          f"--version` alone: {sec['imports_seconds']:.1f}), "
          f"{sec['load_seconds']:.1f} model + folder listing, "
          f"{sec['stream_seconds']:.1f} streaming")  # fmt: skip
    print(f"targets: ratio >= {TARGET_RATIO}, peak < {TARGET_MEMORY_GB} GB; load average "
          f"{load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after")  # fmt: skip
    day = result["date"][:10]
    name = f"encode_throughput-cpu-{n // 1000}k-{day}.json"
    out = args.out or Path(__file__).parent / "results" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    from discretae.core.files import write_text_atomic

    write_text_atomic(out, json.dumps(result, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
