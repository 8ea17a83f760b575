"""Clustering ensembles (``fit --ensemble N``) against their own members, labels only to score.

    python benchmarks/ensemble.py --dataset digits --seeds 0 1 2 3 4 5 6 7 8
    python benchmarks/ensemble.py --dataset fashion-mnist --seeds 0 2 4 --fit-only &
    python benchmarks/ensemble.py --dataset fashion-mnist --seeds 1 3 5 --fit-only &
    python benchmarks/ensemble.py --dataset fashion-mnist --seeds 0 1 2 3 4 5
    python benchmarks/ensemble.py --dataset fashion-mnist --seeds 0 1 2 3 4 5 --device cuda

Members are fits of one variant of ``benchmarks/clustering.py`` (default
recipe+neighbours: ``DiscreteAutoencoder("gumbel", n_codes=10, random_state=SEED)``
with its objectives), saved as ``--models``/VARIANT-SEED.safetensors and reused when
there; ``--fit-only`` just fits the missing ones, so members can be fitted by parallel
processes. The seeds are then cut into disjoint ensembles of ``--members`` consecutive
seeds ({0, 1, 2}, {3, 4, 5}, ...), and each is combined by
``DiscreteAutoencoder.fit_consensus`` seeded with its first seed: what ``fit
--ensemble N`` does after fitting its members one after another. fashion-mnist needs
Debian's dataset-fashion-mnist package.

Reported for members and ensembles alike: NMI, ACC, purity and ARI against the labels
(mean, spread, worst), and the agreement (mean NMI between the cluster ids of every
pair: seeds for members, ensembles for ensembles, a label-free measure of stability);
for ensembles also the consensus step's seconds, the kept member and the distilled
model's NMI to the consensus. The table is printed and the JSON written under
benchmarks/results/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import time
from itertools import combinations
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import device_name, versions  # noqa: E402  (sibling module)
from clustering import VARIANTS, estimator, load, schedule_of  # noqa: E402

from discretae import DiscreteAutoencoder  # noqa: E402
from discretae.evaluation.metrics import clustering_scores, nmi  # noqa: E402

SCORES = ("nmi", "acc", "purity", "ari")


def member(path: Path, variant: str, seed: int, x, device: str) -> DiscreteAutoencoder:
    """The member fit of ``variant`` at ``seed``: loaded from ``path``, else fitted and saved."""
    if not path.exists():
        start = time.perf_counter()
        est = estimator(variant, seed=seed, device=device).fit(x)  # no labels
        est.save(path)
        print(f"member seed {seed}: fitted in {time.perf_counter() - start:.0f} s", flush=True)
        path.with_suffix(".json").write_text(
            json.dumps(
                {
                    "fit_seconds": time.perf_counter() - start,
                    "threads": torch.get_num_threads(),
                    "device": device,
                }
            )
        )
    return DiscreteAutoencoder.load(path, device=device)


def scored(y, ids) -> dict:
    s = clustering_scores(y, ids)
    return {k: float(s[k]) for k in SCORES}


def summary(runs: list[dict], ids: list[np.ndarray]) -> dict:
    out = {}
    for k in SCORES:
        vals = [r[k] for r in runs]
        out[k] = {"mean": statistics.fmean(vals), "sd": statistics.pstdev(vals), "min": min(vals)}
    pairs = [nmi(a, b) for a, b in combinations(ids, 2)]
    out["agreement"] = statistics.fmean(pairs) if pairs else None
    out["n"] = len(runs)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="digits", help="digits or fashion-mnist")
    p.add_argument("--variant", default="recipe+neighbours", choices=list(VARIANTS))
    p.add_argument("--seeds", type=int, nargs="+", default=list(range(9)))
    p.add_argument("--members", type=int, default=3)
    p.add_argument(
        "--models", type=Path, default=None, help="member models [benchmarks/models/DATASET]"
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--fit-only", action="store_true")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    models = a.models or HERE / "models" / a.dataset
    models.mkdir(parents=True, exist_ok=True)
    x, y = load(a.dataset)
    members = {
        s: member(models / f"{a.variant}-{s}.safetensors", a.variant, s, x, a.device)
        for s in a.seeds
    }
    if a.fit_only:
        return
    member_runs, member_ids = [], []
    for s, m in members.items():
        ids = m.predict(x)
        side = models / f"{a.variant}-{s}.json"
        fit = json.loads(side.read_text()) if side.exists() else {}
        member_runs.append({"seed": s, **scored(y, ids), **fit})
        member_ids.append(ids)
    groups = [a.seeds[i : i + a.members] for i in range(0, len(a.seeds) - a.members + 1, a.members)]
    ens_runs, ens_ids = [], []
    for group in groups:
        start = time.perf_counter()
        est = DiscreteAutoencoder("gumbel", n_codes=10, random_state=group[0], device=a.device)
        est.fit_consensus([members[s] for s in group], x)
        seconds = time.perf_counter() - start
        fits = [r.get("fit_seconds") for r in member_runs if r["seed"] in group]
        e = est.ensemble_
        ens_runs.append({
            "seeds": group, **scored(y, est.labels_), "consensus_seconds": seconds,
            "members_fit_seconds": sum(fits) if None not in fits else None,
            "kept_seed": e["seeds"][e["kept"]], "to_consensus": e["to_consensus"],
            "fidelity": e["fidelity"], "distill_steps": e["distill_steps"],
        })  # fmt: skip
        ens_ids.append(est.labels_)
        print(f"ensemble {group}: NMI {ens_runs[-1]['nmi']:.3f} ACC {ens_runs[-1]['acc']:.3f} "
              f"kept seed {ens_runs[-1]['kept_seed']}, fidelity {e['fidelity']:.3f}, "
              f"{seconds:.0f} s", flush=True)  # fmt: skip
    report = {
        "benchmark": "ensemble",
        "dataset": a.dataset,
        "n_images": int(len(x)),
        "device": device_name(a.device),
        "threads": a.threads,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions("torch", "numpy", "scikit-learn", "discretae"),
        "variant": a.variant,
        "schedule": schedule_of(a.variant, x),
        "members_per_ensemble": a.members,
        "members": {"summary": summary(member_runs, member_ids), "runs": member_runs},
        "ensembles": {"summary": summary(ens_runs, ens_ids), "runs": ens_runs},
    }
    out = a.out or HERE / "results" / f"ensemble-{a.dataset}-{a.device.split(':')[0]}.json"
    out.write_text(json.dumps(report, indent=1))
    print(f"\n{a.dataset}, {len(x)} images, {a.variant}, ensembles of {a.members}")
    print(f"{'':10s} {'NMI':>14s} {'ACC':>14s} {'worst NMI/ACC':>14s} {'agreement':>9s}")
    for name in ("members", "ensembles"):
        s = report[name]["summary"]
        agree = "-" if s["agreement"] is None else f"{s['agreement']:.3f}"
        print(
            f"{name:10s} {s['nmi']['mean']:.3f} ± {s['nmi']['sd']:.3f}  "
            f"{s['acc']['mean']:.3f} ± {s['acc']['sd']:.3f}  "
            f"{s['nmi']['min']:.3f} / {s['acc']['min']:.3f}  {agree:>9s}"
        )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
