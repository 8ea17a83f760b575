"""The three discrete autoencoders on scikit-learn's digits, next to k-means on raw pixels.

    python benchmarks/bench_models.py                  # seeds 0 1 2, torch's thread count
    python benchmarks/bench_models.py --threads 1 --seeds 0 1 2 3 4

For every seed, scikit-learn's KMeans(10) on the raw pixels and each model kind
(``DiscreteAutoencoder(model=kind, random_state=seed)`` with default settings, on CPU)
run in the same process. Reported per run: NMI, ACC (Hungarian), purity and ARI of the
10 cluster ids against the digit labels, codes used, and fit time; the table shows means
and standard deviations over seeds, and fit time as a ratio to k-means. Labels are never
used in training.

With CUDA, it also times one VQ layer forward + backward at N = 1,048,576 tokens, K = 1024,
D = 64: discretae's ``VectorQuantizer`` against vector-quantize-pytorch's
``VectorQuantize`` (both EMA, in training mode). Without CUDA that part is skipped and
the JSON says so.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _common import cpu_header  # sibling: scripts run as benchmarks/X.py
from sklearn.cluster import KMeans as SkKMeans
from sklearn.datasets import load_digits

from discretae.core.files import write_text_atomic
from discretae.estimator.discrete_autoencoder import DiscreteAutoencoder
from discretae.evaluation.metrics import acc, ari, nmi, purity

KINDS = ["vq", "gumbel", "binary"]
# measured earlier on these machines (DESIGN.md); shown for context only
REFERENCE = {"kmeans_raw_pixels": {"nmi": 0.742, "acc": 0.792, "purity": 0.792}}
VQ_LAYER_SHAPE = (1_048_576, 1024, 64)


def scores(y: np.ndarray, pred: np.ndarray) -> dict:
    return {
        "nmi": nmi(y, pred),
        "acc": acc(y, pred),
        "purity": purity(y, pred),
        "ari": ari(y, pred),
    }


def run_kmeans(X: np.ndarray, y: np.ndarray, seed: int) -> dict:
    t0 = time.perf_counter()
    pred = SkKMeans(10, n_init=10, random_state=seed).fit_predict(X.reshape(len(X), -1))
    return {"model": "sklearn-kmeans", "seed": seed, "fit_s": time.perf_counter() - t0,
            **scores(y, pred), "used": int(len(np.unique(pred)))}  # fmt: skip


def run_model(kind: str, X: np.ndarray, y: np.ndarray, seed: int) -> dict:
    t0 = time.perf_counter()
    est = DiscreteAutoencoder(model=kind, random_state=seed, device="cpu").fit(X)
    fit_s = time.perf_counter() - t0
    pred = est.predict(X)
    last = est.history_[-1]
    return {
        "model": kind,
        "seed": seed,
        "fit_s": fit_s,
        **scores(y, pred),
        "used": int(len(np.unique(pred))),
        "codes_used": last["usage"],
        "final_loss": last["loss"],
        "epochs": est.epochs,
        "batch_size": est.batch_size,
    }


def summarise(rows: list[dict]) -> list[dict]:
    kmeans_s = statistics.mean(r["fit_s"] for r in rows if r["model"] == "sklearn-kmeans")
    out = []
    for name in ["sklearn-kmeans", *KINDS]:
        rs = [r for r in rows if r["model"] == name]
        s = {"model": name, "runs": len(rs)}
        for key in ("nmi", "acc", "purity", "ari", "fit_s"):
            vals = [r[key] for r in rs]
            s[key] = statistics.mean(vals)
            s[key + "_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        s["fit_over_kmeans"] = s["fit_s"] / kmeans_s
        out.append(s)
    return out


def bench_vq_layer(repeats: int, dev: str = "cuda", shape=VQ_LAYER_SHAPE) -> dict:
    """Forward + backward of one VQ layer, ours against vector-quantize-pytorch."""
    from vector_quantize_pytorch import VectorQuantize

    from discretae.quantizers import VectorQuantizer

    n, k, d = shape
    sync = torch.cuda.synchronize if dev.startswith("cuda") else lambda: None
    g = torch.Generator(device=dev).manual_seed(0)
    z = torch.randn(n, d, device=dev, generator=g)
    codebook = torch.randn(k, d, device=dev, generator=g)
    ours = VectorQuantizer(k, d, kmeans_init=False).to(dev).train()
    ours.set_codebook(codebook)
    theirs = VectorQuantize(dim=d, codebook_size=k, decay=0.9, commitment_weight=0.25)
    theirs = theirs.to(dev).train()
    theirs._codebook.embed.data.copy_(codebook[None])

    def call_ours():
        x = z.clone().requires_grad_(True)
        q, _, aux, _ = ours(x)
        (q.sum() + aux).backward()

    def call_theirs():
        x = z[None].clone().requires_grad_(True)
        q, _, aux = theirs(x)
        (q.sum() + aux.sum()).backward()

    calls = {"discretae": call_ours, "vector-quantize-pytorch": call_theirs}
    times = {name: [] for name in calls}
    for call in calls.values():  # warm-up
        call()
    for _ in range(repeats):  # round robin, so load bursts hit both alike
        for name, call in calls.items():
            sync()
            t0 = time.perf_counter()
            call()
            sync()
            times[name].append(time.perf_counter() - t0)
    ms = {name: 1e3 * statistics.median(t) for name, t in times.items()}
    return {
        "shape_nkd": list(shape),
        "median_ms": ms,
        "theirs_over_ours": ms["vector-quantize-pytorch"] / ms["discretae"],
    }


def print_table(summary: list[dict]) -> None:
    print(
        f"{'model':<16}{'NMI':>14}{'ACC':>14}{'purity':>14}{'ARI':>14}{'fit s':>10}{'x kmeans':>10}"
    )
    for s in summary:
        cells = "".join(
            f"{s[k]:>8.3f}±{s[k + '_std']:.3f}" for k in ("nmi", "acc", "purity", "ari")
        )
        print(f"{s['model']:<16}{cells}{s['fit_s']:>10.2f}{s['fit_over_kmeans']:>10.1f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--repeats", type=int, default=10, help="timed VQ-layer calls (CUDA)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"), help="JSON folder")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    d = load_digits()
    X, y = (d.data / 16.0).reshape(-1, 8, 8), d.target
    rows = []
    for seed in args.seeds:
        rows.append(run_kmeans(X, y, seed))
        rows += [run_model(kind, X, y, seed) for kind in KINDS]
        for r in rows[-4:]:
            print(f"seed {seed} {r['model']:<15} NMI {r['nmi']:.3f} ACC {r['acc']:.3f} "
                  f"fit {r['fit_s']:.2f} s", flush=True)  # fmt: skip
    summary = summarise(rows)
    print_table(summary)
    if torch.cuda.is_available():
        vq_layer = bench_vq_layer(args.repeats)
        print(f"VQ layer fwd+bwd {VQ_LAYER_SHAPE}: {vq_layer['median_ms']}")
    else:
        vq_layer = {"skipped": "no CUDA device: VQ layer timing at N=1048576, K=1024, D=64 "
                    "is unmeasured"}  # fmt: skip
    now = dt.datetime.now(dt.timezone.utc)
    report = {
        **cpu_header(
            "models-digits",
            "torch",
            "numpy",
            "scikit-learn",
            "vector-quantize-pytorch",
            "discretae",
        ),
        "threads": torch.get_num_threads(),
        "data": {"name": "sklearn digits", "n": int(len(X)), "shape": [8, 8], "classes": 10},
        "settings": "DiscreteAutoencoder defaults (epochs=30, batch_size=256, lr=1e-3, "
        "n_codes=10, n_bits=16, latent='global'); sklearn KMeans(10, n_init=10) on raw pixels",
        "reference_measured_earlier": REFERENCE,
        "summary": summary,
        "runs": rows,
        "vq_layer_cuda": vq_layer,
    }
    path = Path(args.out) / f"models-digits-cpu-{now:%Y-%m-%d}.json"
    write_text_atomic(path, json.dumps(report, indent=1) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
