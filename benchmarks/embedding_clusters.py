"""Other ways to cluster a fitted clustering model's images, beside its own code.

    discretae fit fashion-mnist --seed 0 --out fm0.safetensors
    python benchmarks/embedding_clusters.py fm0.safetensors --data fashion-mnist

For every model given (a gumbel clustering model trained with the contrastive term), on
every image of DATA, the script scores (labels only to score):

- ``head``: the model's own clusters (``predict``);
- ``h-kmeans``: k-means (10 seedings) on the contrastive embedding, the L2-normalised
  ``h`` the InfoNCE term trains (what ``fit --embedding-kmeans`` clusters);
- ``hidden-kmeans``: the same on the encoder's hidden layer before its last linear map
  (SimCLR evaluates the representation before its projection head);
- ``h-spectral-K``, ``hidden-spectral-K``: spectral clustering (scikit-learn,
  ``cluster_qr``) of the symmetrised graph of each image's K nearest neighbours, found
  by ``nearest_codes`` (exact), for each K in ``--neighbours``.

With several models it also gives each method's seed agreement (the mean NMI between the
models' clusters, no labels). ``--head-only`` scores the models' own clusters alone (the
seed agreement of a set of fits in a minute). Writes
``embedding_clusters-<data>[-<tag>]-<device>-<date>.json`` under ``--out`` (default
benchmarks/results) and prints a table.
"""

from __future__ import annotations

import argparse
import itertools
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from _common import cpu_header, write_report  # sibling: scripts run as benchmarks/X.py
from scipy import sparse
from sklearn.cluster import KMeans, SpectralClustering

from discretae import DiscreteAutoencoder
from discretae.data.datasets import load_dataset
from discretae.evaluation.metrics import acc, nmi
from discretae.models.neighbours import nearest_neighbours
from discretae.models.training import to_unit_float

RESULTS = Path(__file__).parent / "results"
CHUNK = 2048


def features(est, x) -> dict[str, torch.Tensor]:
    """{"h": contrastive embeddings, "hidden": the encoder's hidden layer}, L2-normalised."""
    data = est._at_working_size(torch.as_tensor(x))
    enc = est.model_.encoder
    est.model_.eval()
    with torch.no_grad():
        h = est._embeddings(data).cpu()
        hidden = torch.cat([
            F.normalize(enc.head[:4](enc.body(to_unit_float(data[i : i + CHUNK]))), dim=-1)
            for i in range(0, len(data), CHUNK)
        ])  # fmt: skip
    return {"h": h, "hidden": hidden}


def spectral(nb: np.ndarray, k: int, n_clusters: int, seed: int) -> np.ndarray:
    """Spectral clusters of the symmetrised graph of each row's ``k`` nearest rows."""
    n = len(nb)
    rows = np.repeat(np.arange(n), k)
    graph = sparse.csr_matrix((np.ones(n * k), (rows, nb[:, :k].ravel())), shape=(n, n))
    graph = ((graph + graph.T) > 0).astype(np.float64)
    sc = SpectralClustering(n_clusters, affinity="precomputed", random_state=seed,
                            assign_labels="cluster_qr")  # fmt: skip
    return sc.fit_predict(graph)


def cluster_model(
    path: Path, x, neighbours: list[int], seed: int, head_only: bool = False
) -> dict[str, np.ndarray]:
    est = DiscreteAutoencoder.load(path, device="cpu")
    k = int(est.model_.config["n_codes"])
    out = {"head": np.asarray(est.predict(x))}
    for name, feat in ({} if head_only else features(est, x)).items():
        t = time.perf_counter()
        out[f"{name}-kmeans"] = KMeans(k, n_init=10, random_state=seed).fit_predict(feat.numpy())
        nb = nearest_neighbours(feat, max(neighbours)).numpy()
        for kn in neighbours:
            out[f"{name}-spectral-{kn}"] = spectral(nb, kn, k, seed)
        print(f"  {path.name} {name}: {time.perf_counter() - t:.0f} s", flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("models", type=Path, nargs="+")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--neighbours", type=int, nargs="+", default=[10, 30])
    p.add_argument("--seed", type=int, default=0, help="k-means and spectral seeding")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--head-only", action="store_true", help="the models' own clusters alone")
    p.add_argument("--tag", default="", help="a word for the result file's name")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ds = load_dataset(args.data)
    x, y = ds.to_array(), np.asarray(ds.labels)
    report = {**cpu_header("embedding_clusters", "torch", "scikit-learn"), "data": args.data,
              "n_images": len(x), "threads": args.threads, "models": {}}  # fmt: skip
    clusters = {}
    for path in args.models:
        clusters[path.name] = ids = cluster_model(path, x, args.neighbours, args.seed,
                                                  args.head_only)  # fmt: skip
        report["models"][path.name] = {
            m: {"nmi": nmi(y, v), "acc": acc(y, v), "nmi_to_head": nmi(ids["head"], v)}
            for m, v in ids.items()
        }  # fmt: skip
    methods = list(next(iter(clusters.values())))
    if len(clusters) > 1:
        report["agreement"] = {
            m: float(
                np.mean([nmi(a[m], b[m]) for a, b in itertools.combinations(clusters.values(), 2)])
            )  # fmt: skip
            for m in methods
        }
    print(f"{'method':<20}" + "".join(f"{n:>22}" for n in clusters) + f"{'agreement':>11}")
    for m in methods:
        row = "".join(f"{r[m]['nmi']:>13.3f} /{r[m]['acc']:>6.3f}"
                      for r in report["models"].values())  # fmt: skip
        agree = report.get("agreement", {}).get(m)
        print(f"{m:<20}{row}{'' if agree is None else f'{agree:>11.3f}'}")
    tag = f"-{args.tag}" if args.tag else ""
    write_report(report, args.out, f"embedding_clusters-{args.data}{tag}")


if __name__ == "__main__":
    main()
