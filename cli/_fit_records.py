"""Rows of the fit summary for what a fit records beside the model: the augmentation
ranges given, the flips the mirror rule chose, an ensemble, code heads, embedding k-means."""

from __future__ import annotations


def ensemble_row(result: dict) -> list[tuple[str, str]]:
    e = result.get("ensemble")
    if not e:
        return []
    seeds, agree = e["seeds"], sum(e["member_agreement"]) / len(e["member_agreement"])
    return [
        (
            "ensemble",
            f"{e['members']} members (seeds {', '.join(map(str, seeds))}), mutual NMI "
            f"{agree:.3f}; kept seed {seeds[e['kept']]} (NMI to the consensus "
            f"{e['to_consensus'][e['kept']]:.3f}, {e['fidelity']:.3f} after "
            f"{e['distill_steps']} steps toward it)",
        )
    ]


def augment_row(result: dict) -> list[tuple[str, str]]:
    ranges = result.get("augment")
    if not ranges:
        return []
    return [
        ("augmentation", ", ".join(f"{k} {v:g}" for k, v in ranges.items()) + "; others default")
    ]


def mirror_row(result: dict) -> list[tuple[str, str]]:
    m = result.get("mirror")
    if not m:
        return []
    ratio = "not measured" if m["ratio"] is None else f"mirror ratio {m['ratio']:.3f}"
    state = f"on, p {m['flip']:g}" if m["flip"] else "off"
    return [("flips", f"{state} ({ratio}; {m['rule']})")]


def heads_row(result: dict) -> list[tuple[str, str]]:
    h = result.get("heads")
    if not h:
        return []
    agree = ", ".join(f"{a:.3f}" for a in h["agreement"])
    distilled = (
        f"; the code trained {h['distill_steps']} steps toward it, NMI {h['fidelity']:.3f}"
        if h["kept"]
        else ""
    )
    return [
        (
            "heads",
            f"{h['heads']}, agreement with the others {agree}; kept head {h['kept']}{distilled}",
        )
    ]


def recluster_row(result: dict) -> list[tuple[str, str]]:
    r = result.get("recluster")
    if not r:
        return []
    return [
        (
            "embedding k-means",
            f"the code's NMI to the clusters {r['before']:.3f}, {r['fidelity']:.3f} after "
            f"{r['distill_steps']} steps toward them",
        )
    ]
