"""PNG figures for reports: image montages (Pillow) and plots (matplotlib, Agg canvas).

Images are (N, C, H, W) with C in 1, 3, 4 (alpha dropped) or (N, H, W), float in [0, 1]
or uint8, numpy or torch. Small images are enlarged by whole factors with nearest
neighbour so 8x8 digits stay visible. Every function writes its PNG atomically and
returns the path. pyplot is never imported, so no global matplotlib state changes.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont

from discretae.core.errors import DiscretaeError
from discretae.core.files import atomic_path
from discretae.core.images import MONTAGE_MAX, save_png
from discretae.evaluation.metrics import contingency, hungarian_match

_PAD = 2
_MIN_TILE = 32  # px: small images are enlarged to at least this
_BG = (255, 255, 255)


def _as_numpy(x, name: str) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _images_u8(images, name: str = "images") -> np.ndarray:
    """(N, H, W, 3) uint8 from (N, C, H, W) or (N, H, W) float [0, 1] or uint8."""
    a = _as_numpy(images, name)
    if a.ndim == 3:
        a = a[:, None]
    if a.ndim != 4 or a.shape[1] not in (1, 3, 4) or a.shape[0] == 0:
        raise DiscretaeError(
            f"{name} has shape {a.shape}; expected (N, C, H, W) with C in 1, 3, 4, or (N, H, W)"
        )
    if a.dtype != np.uint8:
        if a.dtype.kind not in "fiub":
            raise DiscretaeError(f"{name} has dtype {a.dtype}; expected float or uint8")
        a = np.round(np.clip(np.nan_to_num(a.astype(np.float32)), 0.0, 1.0) * 255).astype(np.uint8)
    a = a[:, :3].transpose(0, 2, 3, 1)
    return np.repeat(a, 3, axis=3) if a.shape[3] == 1 else a


def _scale(h: int, w: int) -> int:
    return max(1, math.ceil(_MIN_TILE / max(h, w)))


def _font(size: int = 12) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType
        return ImageFont.load_default()


def _save_image(img: Image.Image, path) -> Path:
    return save_png(path, np.asarray(img))


def _save_figure(fig: Figure, path) -> Path:
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return Path(path)


def _grid(rows: list[list[np.ndarray]], labels: list[str] | None, title: str | None) -> Image.Image:
    """Compose rows of (H, W, 3) uint8 tiles, each row with an optional label on its left."""
    h, w = rows[0][0].shape[:2]
    s = _scale(h, w)
    th, tw = h * s, w * s
    font = _font()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = 0 if not labels else int(max(probe.textlength(t, font=font) for t in labels)) + 8
    title_h = 18 if title else 0
    ncols = max(len(r) for r in rows)
    width = label_w + ncols * (tw + _PAD) + _PAD
    height = title_h + len(rows) * (th + _PAD) + _PAD
    canvas = Image.new("RGB", (max(width, 1), height), _BG)
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((_PAD + 2, 2), title, fill=(0, 0, 0), font=font)
    for r, row in enumerate(rows):
        y = title_h + _PAD + r * (th + _PAD)
        if labels:
            draw.text((4, y + th // 2), labels[r], fill=(0, 0, 0), font=font, anchor="lm")
        for c, tile in enumerate(row):
            im = Image.fromarray(tile).resize((tw, th), Image.NEAREST)
            canvas.paste(im, (label_w + _PAD + c * (tw + _PAD), y))
    return canvas


def montage(
    images, path: str | os.PathLike, ncols: int | None = None, max_images: int = MONTAGE_MAX
) -> Path:
    """One PNG grid of the first ``max_images`` images, ``ncols`` wide (default: square)."""
    a = _images_u8(images)[:max_images]
    ncols = ncols or math.ceil(math.sqrt(len(a)))
    if ncols < 1:
        raise DiscretaeError(f"ncols={ncols}; expected >= 1")
    rows = [list(a[i : i + ncols]) for i in range(0, len(a), ncols)]
    return _save_image(_grid(rows, None, None), path)


def cluster_montage(
    images,
    cluster_ids,
    path: str | os.PathLike,
    per_cluster: int = 10,
    max_clusters: int = 64,
    seed: int = 0,
) -> Path:
    """One row per cluster id (ascending) with up to ``per_cluster`` random members.

    images: (N, C, H, W) or (N, H, W); cluster_ids: (N,) ints. With more than
    ``max_clusters`` clusters, the largest ones are shown.
    """
    a = _images_u8(images)
    ids = _as_numpy(cluster_ids, "cluster_ids").astype(np.int64).ravel()
    if len(ids) != len(a):
        raise DiscretaeError(f"images has {len(a)} entries but cluster_ids has {len(ids)}")
    uniq, counts = np.unique(ids, return_counts=True)
    shown = uniq
    if len(uniq) > max_clusters:
        shown = np.sort(uniq[np.argsort(-counts, kind="stable")[:max_clusters]])
    rng = np.random.default_rng(seed)
    rows, labels = [], []
    for cid in shown:
        members = np.flatnonzero(ids == cid)
        pick = np.sort(rng.choice(members, min(per_cluster, len(members)), replace=False))
        rows.append(list(a[pick]))
        labels.append(f"{cid} (n={len(members)})")
    title = f"{len(shown)} of {len(uniq)} clusters" + (
        ", largest" if len(shown) < len(uniq) else ""
    )
    return _save_image(_grid(rows, labels, title), path)


def reconstruction_grid(
    originals, reconstructions, path: str | os.PathLike, n: int = 16, per_row: int = 8
) -> Path:
    """The first ``n`` originals, each row followed by a row of their reconstructions."""
    a, b = _images_u8(originals, "originals"), _images_u8(reconstructions, "reconstructions")
    if a.shape != b.shape:
        raise DiscretaeError(
            f"originals have shape {a.shape} but reconstructions {b.shape} (as N, H, W, RGB)"
        )
    a, b = a[:n], b[:n]
    rows, labels = [], []
    for i in range(0, len(a), per_row):
        rows += [list(a[i : i + per_row]), list(b[i : i + per_row])]
        labels += ["original", "reconstruction"]
    return _save_image(_grid(rows, labels, None), path)


def contingency_heatmap(
    labels_true, cluster_ids, path: str | os.PathLike, label_names: list[str] | None = None
) -> Path:
    """Counts of true label (rows) by cluster (columns); images labeled -1 are left out.

    Columns are in Hungarian order: the cluster matched to each class in class order,
    then unmatched clusters by size. Counts are written in the cells of small tables.
    """
    t = _as_numpy(labels_true, "labels_true").astype(np.int64).ravel()
    p = _as_numpy(cluster_ids, "cluster_ids").astype(np.int64).ravel()
    if len(t) != len(p):
        raise DiscretaeError(f"labels_true has {len(t)} entries but cluster_ids has {len(p)}")
    keep = t >= 0
    table, classes, clusters = contingency(t[keep], p[keep])
    rows, cols = hungarian_match(table)  # rows come sorted
    acc = table[rows, cols].sum() / table.sum()
    taken = set(cols.tolist())
    rest = [c for c in np.argsort(-table.sum(axis=0), kind="stable") if c not in taken]
    order = list(cols) + rest
    table = table[:, order]
    nr, nc = table.shape
    fig = Figure(figsize=(min(3 + 0.45 * nc, 24), min(2 + 0.4 * nr, 16)))
    ax = fig.add_subplot()
    im = ax.imshow(table, cmap="Blues", aspect="auto", interpolation="nearest")
    fig.colorbar(im, ax=ax, label="images")
    names = [
        label_names[c] if label_names and 0 <= c < len(label_names) else str(c) for c in classes
    ]
    ax.set_yticks(range(nr), names)
    step = max(1, nc // 40)
    ax.set_xticks(range(0, nc, step), [str(clusters[order[j]]) for j in range(0, nc, step)])
    ax.tick_params(axis="x", labelrotation=90 if nc > 12 else 0)
    if nr * nc <= 600 and nc <= 30:
        hi = table.max()
        for i in range(nr):
            for j in range(nc):
                if table[i, j]:
                    color = "white" if table[i, j] > hi / 2 else "black"
                    ax.text(j, i, table[i, j], ha="center", va="center", fontsize=8, color=color)
    ax.set_xlabel("cluster id (Hungarian order)")
    ax.set_ylabel("true label")
    ax.set_title(f"{len(t[keep])} labeled images, {nc} clusters, ACC {acc:.3f}")
    fig.tight_layout()
    return _save_figure(fig, path)


def usage_histogram(counts, path: str | os.PathLike, title: str | None = None) -> Path:
    """Bar chart of how often each code was used; counts: (K,) ints."""
    c = _as_numpy(counts, "counts").astype(np.float64).ravel()
    if c.size == 0 or (c < 0).any():
        raise DiscretaeError(f"counts has {c.size} entries; expected K >= 1 non-negative counts")
    k, used = len(c), int((c > 0).sum())
    p = c[c > 0] / c.sum() if c.sum() else np.ones(1)
    perplexity = float(np.exp(-(p * np.log(p)).sum()))
    fig = Figure(figsize=(min(4 + k / 20, 12), 3.5))
    ax = fig.add_subplot()
    if k <= 256:
        ax.bar(np.arange(k), c, width=0.9, color="tab:blue")
    else:  # thousands of bars render as noise; a filled step reads better
        ax.fill_between(np.arange(k), c, step="mid", color="tab:blue", linewidth=0)
    ax.set_xlim(-0.5, k - 0.5)
    ax.set_xlabel("code index")
    ax.set_ylabel("count")
    ax.set_title(title or f"code usage: {used} of {k} used, perplexity {perplexity:.1f}")
    fig.tight_layout()
    return _save_figure(fig, path)
