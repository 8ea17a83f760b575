"""Clustering quality of the discrete code against scikit-learn KMeans, with an ablation.

    python benchmarks/clustering.py --dataset digits
    python benchmarks/clustering.py --dataset fashion-mnist --variants recipe recon

For every seed, each variant fits ``DiscreteAutoencoder("gumbel", n_codes=10)`` on all
images of the dataset without their labels (digits: 1797; fashion-mnist: train + test,
70000), then the labels score the code's cluster ids (NMI, ACC, purity, ARI). KMeans(10,
n_init=10) on the raw pixels runs in the same script with the same seeds. The table
gives, per method, the mean and spread over seeds, the worst seed's NMI and ACC, the
mean fit time and the seed agreement: the NMI between the cluster ids of every pair of
seeds, a label-free measure of how stable a method is. The JSON
(``--out``, default under benchmarks/results/) keeps every run, and a ``.ids.npz``
beside it their cluster ids. Runs already in ``--out`` with the same schedule are kept
rather than run again, so a long benchmark can be continued.

Variants (the ablation; "recipe" is the default ``discretae fit DATA --model gumbel
--codes 10``, every other setting at its default):
    recon        reconstruction only (``objectives="none"``)
    mi           + IIC mutual information between the codes of two augmented views
    mi+con       + InfoNCE between the views' embeddings
    mi+con+style + content/style split (the recipe until self-labelling joined it)
    recipe       + self-labelling (SCAN): a view's confident code is the other's target
                 (the default, "auto")
    recipe+neighbours  the recipe's objectives (``RECIPE_OBJECTIVES``) + SCAN's
                 neighbour consistency (opt-in): an image's code should match that of
                 one of its k nearest neighbours in the contrastive embedding, mined
                 during the fit and encoded as a third view; the mining settings are the
                 defaults of ``objective_options`` (k=10, first mined after a quarter of
                 the steps, again every epoch), and its schedule names them
    mi+con+style+critic  mi+con+style and the discriminator objective
    critic       the discriminator objective alone, with the style split
    constant-lr, hold-lr  mi+con+style with a constant learning rate, or one held for
                 80% of the steps before its cosine decay (the default decays along a
                 cosine over the whole run)
    recipe+heads the recipe with 5 code heads (IIC's count; ``fit --heads 5``): the
                 kept head is the one the others agree with most, distilled into the
                 code when it is not the quantizer's own (opt-in)
    recipe+erase, recipe+zoom, recipe+shift  the recipe with one augmentation range
                 stronger than its default: a random rectangle erased in a quarter of
                 the images (default: none), zoom +-25% (default 12%), shift +-20% of
                 the side (default 10%)
    recipe-flips the recipe with the mirror rule's flips forced off (``{"augment":
                 {"flip": 0}}``): the rule's ablation where the data turns flips on
                 (Fashion-MNIST), the recipe itself where it does not (digits)
    recipe+kmeans the recipe, then the embedding-k-means step (opt-in: k-means, 10
                 seedings, on the contrastive embedding of the training images, distilled
                 into the code; ``objective_options={"embedding_kmeans": True}``). It is
                 fitted without the step, scored as "recipe+kmeans:before", then given it
                 (``DiscreteAutoencoder.recluster``, what such a fit ends with): the
                 step's gain on the same fits.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from discretae.estimator.recipe import RECIPE_OBJECTIVES
from discretae.estimator.recluster import embedding_kmeans_on, trains_contrastive

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

VARIANTS = {
    "recon": "none",
    "mi": "mi",
    "mi+con": "mi,contrastive",
    "mi+con+style": "mi,contrastive,style",
    "recipe": "auto",
    "recipe+neighbours": ",".join((*RECIPE_OBJECTIVES, "neighbours")),
    "mi+con+style+critic": "mi,contrastive,style,critic",
    "critic": "critic,style",
    "constant-lr": "mi,contrastive,style",
    "hold-lr": "mi,contrastive,style",
    "recipe+heads": "auto",
    "recipe+kmeans": "auto",
    "recipe+erase": "auto",
    "recipe+zoom": "auto",
    "recipe+shift": "auto",
    "recipe-flips": "auto",
    "recipe+t0.2": "auto",
    "recipe+t0.1": "auto",
    "recipe+b512": "auto",
}
# variants that change more than the objectives
OPTIONS = {
    "constant-lr": {"lr_schedule": "constant"},
    "hold-lr": {"lr_schedule": "hold-cosine"},
    "recipe+heads": {"objective_options": {"heads": 5}},
    "recipe+kmeans": {"objective_options": {"embedding_kmeans": True}},
    # stronger augmentations than the defaults (models.augment.AugmentConfig)
    "recipe+erase": {"objective_options": {"augment": {"erase": 0.25}}},
    "recipe+zoom": {"objective_options": {"augment": {"scale": 0.25}}},
    "recipe+shift": {"objective_options": {"augment": {"translate": 0.2}}},
    # the mirror rule's flips forced off (where the data turns them on, the ablation)
    "recipe-flips": {"objective_options": {"augment": {"flip": 0.0}}},
    # the contrastive term's temperature (the recipe's: 0.5, SimCLR's; SCAN's pretext 0.1)
    "recipe+t0.2": {"objective_options": {"temperature": 0.2}},
    "recipe+t0.1": {"objective_options": {"temperature": 0.1}},
    # twice the batch (more negatives for the contrastive term, a better MI estimate)
    "recipe+b512": {"batch_size": 512},
}
SCORES = ("nmi", "acc", "purity", "ari")
# variant -> the name of its fit scored before the embedding-k-means step: the variant is
# fitted without it, scored under that name, then reclustered (DiscreteAutoencoder.
# recluster, the step embedding_kmeans=True ends a fit with): its gain on the same fit
RECLUSTERED = {"recipe+kmeans": "recipe+kmeans:before"}


def load(name: str):
    from discretae.data.datasets import load_dataset

    ds = load_dataset(name)
    return ds.to_array(), ds.labels


def run_ours(x, y, variant: str, seed: int, device: str, epochs: int | None = None) -> dict:
    from discretae.evaluation.metrics import clustering_scores

    start = time.perf_counter()
    est = estimator(variant, seed=seed, device=device, epochs=epochs)
    reclusters = variant in RECLUSTERED
    if reclusters:  # the fit, scored, then the step that embedding_kmeans=True ends it with
        est.set_params(objective_options={"embedding_kmeans": False})
    est.fit(x)  # no labels
    extra = {}
    if reclusters:
        ids = est.predict(x)
        before = clustering_scores(y, ids)
        extra["before"] = {k: float(before[k]) for k in SCORES}
        extra["before"].update(fit_seconds=time.perf_counter() - start, ids=ids)
        est.recluster(x)
        extra["recluster"] = est.recluster_
    seconds = time.perf_counter() - start
    ids = est.predict(x)
    scores = clustering_scores(y, ids)
    return {
        **{k: float(scores[k]) for k in SCORES},
        "clusters_used": int(scores["n_clusters_used"]),
        "fit_seconds": seconds,
        "epochs": len(est.history_),
        **({"heads": est.heads_} if est.heads_ else {}),
        **extra,
        "ids": ids,
    }


def estimator(variant: str, seed: int = 0, device: str = "cpu", epochs: int | None = None):
    """The variant's estimator; ``epochs`` (``--epochs``) replaces the recipe's count."""
    from discretae import DiscreteAutoencoder

    options = {"objectives": VARIANTS[variant], **OPTIONS.get(variant, {}), "epochs": epochs}
    return DiscreteAutoencoder("gumbel", n_codes=10, random_state=seed, device=device, **options)


def schedule_of(variant: str, x, epochs: int | None = None, images=None) -> str:
    """What a variant's fit on x trains with: its objectives, epochs, learning rate and
    its curve, the neighbour mining where the variant mines, and the augmentation ranges
    that differ from the defaults, flips by the mirror rule on ``images`` (x as images)
    included. Cached runs of another schedule (an older default) are run again."""
    from discretae.estimator.fitted import as_images

    est = estimator(variant, epochs=epochs)
    shape = tuple(as_images(x[:1]).shape[1:])
    model = est._build(shape, images)
    n_epochs, lr = est._schedule(model, len(x))  # the given epochs, or the recipe's
    names = ",".join(sorted(est._objective_names(shape))) or "none"
    decoder = model.config["decoder"]
    schedule = f"{n_epochs} epochs, lr {lr:g}, {est.lr_schedule_used(model)}"
    # runs from before the decoder and precision settings had the full decoder and
    # float32, and no mention of either
    dtype = est.training_dtype(model, est.device)
    return (
        f"objectives {names}; {schedule}"
        + ("" if decoder == "full" else f"; {decoder} decoder")
        + ("" if dtype is None else f"; {str(dtype).removeprefix('torch.')} networks")
        + _mining_of(model)
        + _heads_of(model)
        + _recluster_of(est, model)
        + _augment_of(model)
        + _temperature_of(model)
        + ("" if est.batch_size == 256 else f"; batch {est.batch_size}")
    )


def _temperature_of(model) -> str:
    """ "; temperature T" where the contrastive term's is not 0.5 (the value of every run
    from before it was named), else ""."""
    t = (model.config.get("objectives") or {}).get("temperature", 0.5)
    return "" if t == 0.5 else f"; temperature {t:g}"


def _augment_of(model) -> str:
    """ "; augment NAME VALUE, .." for the ranges that differ from the defaults, else ""."""
    from discretae.models.augment import AugmentConfig

    if getattr(model, "augment", None) is None:
        return ""
    default = AugmentConfig().to_dict()
    changed = [f"{k} {v:g}" for k, v in model.augment.to_dict().items() if v != default[k]]
    return f"; augment {', '.join(changed)}" if changed else ""


def _recluster_of(est, model) -> str:
    """ "; embedding k-means distilled" for a fit that ends with the step, else ""."""
    on = embedding_kmeans_on(est.objective_options)  # every variant's code is its cluster
    return "; embedding k-means distilled" if on and trains_contrastive(model) else ""


def _mining_of(model) -> str:
    """The neighbour mining settings as a schedule suffix, "" for a model that does not
    mine (so the schedules of the other variants read as before)."""
    if model.mining is None:
        return ""
    o = model.config["objectives"]
    return (
        f"; neighbours k {o['n_neighbours']}, from {o['neighbour_start']:g} of the steps, "
        f"every {o['neighbour_every']} epoch(s), weight {o['neighbours']:g}, "
        f"entropy {o['neighbour_entropy']:g}"
    )


def _heads_of(model) -> str:
    """ "; H code heads" for a model with extra heads, "" otherwise."""
    heads = (model.config["objectives"] or {}).get("heads", 1)
    return f"; {heads} code heads, the others' favourite kept" if heads > 1 else ""


def run_kmeans(x, y, seed: int) -> dict:
    from sklearn.cluster import KMeans

    from discretae.evaluation.metrics import clustering_scores

    flat = x.reshape(len(x), -1)
    start = time.perf_counter()
    ids = KMeans(10, n_init=10, random_state=seed).fit_predict(flat)
    seconds = time.perf_counter() - start
    scores = clustering_scores(y, ids)
    return {**{k: float(scores[k]) for k in SCORES}, "fit_seconds": seconds, "ids": ids}


def agreement(ids: dict) -> dict | None:
    """Label-free stability of a method: NMI between the partitions of every pair of
    seeds (1: the same clusters whatever the seed)."""
    from itertools import combinations

    from discretae.evaluation.metrics import nmi

    pairs = [nmi(ids[a], ids[b]) for a, b in combinations(sorted(ids), 2)]
    if not pairs:
        return None
    return {"mean": statistics.fmean(pairs), "min": min(pairs), "pairs": len(pairs)}


def summarize(runs: list[dict], method: str, ids: dict) -> dict | None:
    mine = [r for r in runs if r["method"] == method]
    if not mine:
        return None
    out = {"seeds": sorted(r["seed"] for r in mine)}
    out["seed_agreement_nmi"] = agreement(
        {r["seed"]: ids[(method, r["seed"])] for r in mine if (method, r["seed"]) in ids}
    )
    for k in (*SCORES, "fit_seconds"):
        values = [r[k] for r in mine]
        out[k] = {
            "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values),
            "max": max(values),
        }
    return out


def table(summary: dict) -> str:
    """The summary as a Markdown table: per method the mean ± std over seeds of every
    score, the worst seed's NMI and ACC, the seed agreement and the mean fit time."""
    lines = [
        "| method | seeds | NMI | ACC | purity | ARI | worst NMI | worst ACC "
        "| seed agreement | fit s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m, s in summary.items():
        cells = " | ".join(f"{s[k]['mean']:.3f} ± {s[k]['std']:.3f}" for k in SCORES)
        worst = f"{s['nmi']['min']:.3f} | {s['acc']['min']:.3f}"
        seeds = ",".join(map(str, s["seeds"]))
        agree = s["seed_agreement_nmi"]
        agree = f"{agree['mean']:.3f}" if agree else "-"
        fit = f"{s['fit_seconds']['mean']:.0f}"
        lines.append(f"| {m} | {seeds} | {cells} | {worst} | {agree} | {fit} |")
    return "\n".join(lines)


def plot(summary: dict, title: str, path: Path) -> None:
    """Bars of mean NMI and ACC per method, with the spread over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2, 3.6))
    for i, key in enumerate(("nmi", "acc")):
        means = [summary[m][key]["mean"] for m in names]
        stds = [summary[m][key]["std"] for m in names]
        xs = [j + (i - 0.5) * 0.38 for j in range(len(names))]
        ax.bar(xs, means, 0.38, yerr=stds, capsize=3, label=key.upper())
    ticks = [f"{m}\n{len(summary[m]['seeds'])} seed(s)" for m in names]
    ax.set_xticks(range(len(names)), ticks, fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("score: mean, bar = std over seeds")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def main() -> None:
    import torch
    from _common import device_name, versions

    from discretae.estimator.fitted import as_images

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="digits", help="digits or fashion-mnist")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--no-kmeans", action="store_true", help="skip the KMeans peer")
    p.add_argument(
        "--epochs", type=int, default=None, help="epochs of every fit instead of the recipe's"
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument(
        "--include",
        type=Path,
        nargs="*",
        default=[],
        help="add the runs of these JSON files (same dataset and device type), e.g. from "
        "processes that ran other seeds at the same time",
    )
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    dev = "gpu" if a.device.startswith("cuda") else "cpu"
    out = a.out or HERE / "results" / f"clustering-{a.dataset}-{dev}.json"
    x, y = load(a.dataset)
    images = as_images(x)  # each variant's schedule names the flips the mirror rule chose
    schedules = {v: schedule_of(v, x, a.epochs, images) for v in VARIANTS}
    schedules.update({before: schedules[v] for v, before in RECLUSTERED.items()})
    done: list[dict] = []
    ids: dict[tuple[str, int], np.ndarray] = {}  # (method, seed) -> cluster ids

    def current(r: dict) -> bool:  # KMeans, or a fit with today's schedule
        return r["method"] == "kmeans" or r.get("schedule") == schedules.get(r["method"])

    def take(path: Path, runs: list[dict]) -> None:
        seen = {(r["method"], r["seed"]) for r in done}
        new = [r for r in runs if current(r) and (r["method"], r["seed"]) not in seen]
        done.extend(new)
        side = path.with_suffix(".ids.npz")
        if side.exists():
            with np.load(side) as z:
                for r in new:
                    key = f"{r['method']}/{r['seed']}"
                    if key in z.files:
                        ids[(r["method"], r["seed"])] = z[key]

    if out.exists():
        old = json.loads(out.read_text())
        if old.get("dataset") == a.dataset and old.get("device_type") == dev:
            take(out, old["runs"])
    for extra in a.include:
        more = json.loads(extra.read_text())
        if more.get("dataset") != a.dataset or more.get("device_type") != dev:
            raise SystemExit(f"{extra} holds {more.get('dataset')} on {more.get('device_type')}")
        take(extra, more["runs"])

    def save() -> None:
        report = {
            "benchmark": "clustering",
            "dataset": a.dataset,
            "n_images": int(len(x)),
            "device": device_name(a.device),
            "device_type": dev,
            "threads": a.threads,
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "versions": versions("torch", "numpy", "scikit-learn", "discretae"),
            "recipe": "DiscreteAutoencoder('gumbel', n_codes=10, objectives=VARIANT, "
            "random_state=SEED), every other setting at its default; labels only score",
            "variants": VARIANTS,
            "options": OPTIONS,
            "targets": {
                "fashion-mnist": {"nmi": 0.65, "acc": 0.62, "aim": {"nmi": 0.70, "acc": 0.70}},
                "digits": {"nmi": 0.85, "acc": 0.90},
                "fashion-mnist fit_seconds (2-core CPU)": 1800,
            },
            "schedules": schedules,
            "summary": {
                m: summarize(done, m, ids) for m in ["kmeans", *RECLUSTERED.values(), *VARIANTS]
            },
            "runs": done,
        }
        report["summary"] = {k: v for k, v in report["summary"].items() if v}
        side = out.with_suffix(".ids.npz")
        with open(side.with_suffix(".tmp"), "wb") as f:
            np.savez_compressed(f, **{f"{m}/{s}": v.astype(np.int8) for (m, s), v in ids.items()})
        side.with_suffix(".tmp").replace(side)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(report, indent=1))
        tmp.replace(out)

    def have(method: str, seed: int) -> bool:
        return any(r["method"] == method and r["seed"] == seed for r in done)

    jobs = [] if a.no_kmeans else [("kmeans", s) for s in a.seeds]
    jobs += [(v, s) for s in a.seeds for v in a.variants]
    for method, seed in jobs:
        if have(method, seed):
            continue
        load_before = os.getloadavg()[0]
        if method == "kmeans":
            r = run_kmeans(x, y, seed)
        else:
            r = {**run_ours(x, y, method, seed, a.device, a.epochs), "schedule": schedules[method]}
        ids[(method, seed)] = np.asarray(r.pop("ids"))
        r.update(method=method, seed=seed, load_before=load_before, threads=a.threads)
        if method in RECLUSTERED:  # the same fit, scored before the step
            before = {**r.pop("before"), "method": RECLUSTERED[method]}
            ids[(before["method"], seed)] = np.asarray(before.pop("ids"))
            keep = ("schedule", "seed", "load_before", "threads")
            done.append({**{k: r[k] for k in keep}, **before, "note": "before the k-means step"})
        done.append(r)
        save()
        print(
            f"{method:19s} seed {seed}: NMI {r['nmi']:.3f} ACC {r['acc']:.3f} "
            f"purity {r['purity']:.3f} ARI {r['ari']:.3f} fit {r['fit_seconds']:.0f} s",
            flush=True,
        )
    save()
    summary = json.loads(out.read_text())["summary"]
    print(f"\n{a.dataset}, {len(x)} images, {device_name(a.device)}, {a.threads} threads")
    print(table(summary))
    figure = out.with_suffix(".png")
    plot(summary, f"{a.dataset}: discretae variants and KMeans (pixels)", figure)
    print(f"\nwrote {out} and {figure}")


if __name__ == "__main__":
    main()
