"""The network of the learned code prior (:mod:`discretae.compression.learned_prior`):
the context each symbol is predicted from, the float network trained on it, its
quantization, and the integer network the coder runs (the module docstring of
``learned_prior`` says why every step is exact)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from discretae.compression.prior import P_MAX, TABLE_SCALE

NEIGHBOURS = ((0, -1), (-1, 0), (-1, -1), (-1, 1), (0, -2), (-2, 0))
NEIGHBOUR_LEVELS = 4  # levels t-3..t of each neighbour
OWN_LEVELS = 4  # levels t-4..t-1 of the cell itself
EMBED = 16
HIDDEN = 128
LOGIT_STEPS = 32  # logits in steps of 1/32 nat
EXP_TABLE = 32 * 24  # exp(-d / 32) for d < 768: below 2**-34 of the top beyond
EXP_SCALE = 2**24
SHIFT = 20  # multipliers are fixed point with 20 fraction bits
BIAS_LIMIT = 2**30  # |integer biases| stay below, so every accumulator is below 2**31
MULT_LIMIT = 2**22  # multipliers stay below: accumulator times multiplier below 2**53
PAD = 2  # cells of "outside" around the grid (the widest neighbour offset)


def columns(t: int) -> list[tuple[int, int, int]]:
    """(di, dj, level) of each context code of a level-t symbol."""
    cols = [
        (di, dj, lv)
        for di, dj in NEIGHBOURS
        for lv in range(max(0, t - NEIGHBOUR_LEVELS + 1), t + 1)
    ]
    return cols + [(0, 0, lv) for lv in range(max(0, t - OWN_LEVELS), t)]


def padded(sym: np.ndarray, n_codes: int) -> np.ndarray:
    """(n, h, w, T) -> (n, h + PAD, w + 2 PAD, T) with ``n_codes`` ("outside") around."""
    n, h, w, levels = sym.shape
    out = np.full((n, h + PAD, w + 2 * PAD, levels), n_codes, dtype=np.int64)
    out[:, PAD:, PAD : PAD + w] = sym
    return out


def context(pad: np.ndarray, cols, i: int, j: int) -> np.ndarray:
    """(n, L) context codes of cell (i, j) from the padded symbols."""
    return np.stack([pad[:, PAD + i + di, PAD + j + dj, lv] for di, dj, lv in cols], 1)


def all_contexts(sym: np.ndarray, n_codes: int, t: int) -> np.ndarray:
    """(n, h, w, L) context codes of every level-t symbol of known codes."""
    pad = padded(sym, n_codes)
    _, h, w, _ = sym.shape
    cols = columns(t)
    return np.stack(
        [pad[:, PAD + di : PAD + di + h, PAD + dj : PAD + dj + w, lv] for di, dj, lv in cols], -1
    )


class LevelNet(nn.Module):
    """The float network of one level, trained before quantization."""

    def __init__(self, n_codes: int, cols, n_positions: int) -> None:
        super().__init__()
        self.levels = sorted({lv for _, _, lv in cols})
        self.col_level = torch.tensor([self.levels.index(lv) for _, _, lv in cols])
        self.n_codes = n_codes
        self.embed = nn.Embedding(len(self.levels) * (n_codes + 1), EMBED)
        self.l1 = nn.Linear(len(cols) * EMBED, HIDDEN)
        self.pos = nn.Embedding(n_positions, HIDDEN)
        nn.init.zeros_(self.pos.weight)
        self.l2 = nn.Linear(HIDDEN, HIDDEN)
        self.l3 = nn.Linear(HIDDEN, n_codes)

    def rows(self, ctx: torch.Tensor) -> torch.Tensor:
        return ctx + self.col_level * (self.n_codes + 1)

    def hidden(self, ctx, pos):
        a1 = F.relu(self.l1(self.embed(self.rows(ctx)).flatten(1)) + self.pos(pos))
        return a1, F.relu(self.l2(a1))

    def forward(self, ctx, pos):
        return self.l3(self.hidden(ctx, pos)[1])


def _int8(w: torch.Tensor, dim: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 quantization (per row when ``dim`` is 1): (int8 values, scales)."""
    w = w.detach().double()
    top = w.abs().amax(dim=1, keepdim=True) if dim == 1 else w.abs().max().reshape(1, 1)
    scale = 127.0 / top.clamp_min(1e-12)
    return torch.round(w * scale).to(torch.int8).numpy(), scale.reshape(-1).numpy()


def _bias(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 1 - BIAS_LIMIT, BIAS_LIMIT - 1).astype(np.int32)


def _fixed(x: np.ndarray) -> np.ndarray:
    """Real multipliers -> int64 fixed point with SHIFT fraction bits, in [1, MULT_LIMIT)."""
    return np.clip(np.rint(np.asarray(x, np.float64) * 2**SHIFT), 1, MULT_LIMIT - 1).astype(
        np.int64
    )


def _rescale(acc: np.ndarray, mult: np.ndarray) -> np.ndarray:
    """Integer accumulators (float64) times fixed-point multipliers, rounded half up, in
    place: exact, because ``|acc| < 2**31`` and ``mult < 2**22`` keep every product
    below 2**53 and the division is by a power of two."""
    acc *= mult
    acc += 2.0 ** (SHIFT - 1)
    acc *= 2.0**-SHIFT
    return np.floor(acc, out=acc)


def _layer(a: np.ndarray, w: np.ndarray, bias: np.ndarray, mult: np.ndarray) -> np.ndarray:
    """Activations in [0, 255] (float32) through int8 weights (float32: every partial
    sum an integer below 2**24), the integer bias and the rescaling: float64 integers."""
    acc = np.add(a @ w, bias, dtype=np.float64)
    return _rescale(acc, mult)


class IntLevel:
    """The integer network of one level (see the module docstring)."""

    NAMES = ("embed", "w1", "pos1", "m1", "w2", "b2", "m2", "w3", "b3", "m3")

    def __init__(self, arrays: dict[str, np.ndarray], cols) -> None:
        self.a = arrays
        self.cols = cols
        n_rows = arrays["embed"].shape[0] // max(1, len({lv for _, _, lv in cols}))
        self.n_codes = n_rows - 1
        levels = sorted({lv for _, _, lv in cols})
        col_level = np.array([levels.index(lv) for _, _, lv in cols], dtype=np.int64)
        self.col_offset = col_level * n_rows
        # the first layer as one (codes + 1, HIDDEN) table per context column, stacked: the
        # products of the int8 embeddings and weights, summed exactly in integers; each
        # entry is below 16 * 128 * 128 in size and a context sums at most 28 of them,
        # so float32 sums them exactly in any order
        emb = arrays["embed"].astype(np.int64)
        w1 = arrays["w1"].astype(np.int64).reshape(HIDDEN, len(cols), EMBED)
        tables = [emb[off : off + n_rows] @ w1[:, c].T for c, off in enumerate(self.col_offset)]
        self.table1 = torch.from_numpy(np.concatenate(tables).astype(np.float32))
        self.col_base = np.arange(len(cols), dtype=np.int64) * n_rows
        self.pos1 = arrays["pos1"].astype(np.float64)
        self.mult = [arrays[m].astype(np.float64) for m in ("m1", "m2", "m3")]
        self.bias = [arrays[b].astype(np.float64) for b in ("b2", "b3")]
        self.w2 = arrays["w2"].astype(np.float32).T.copy()
        self.w3 = arrays["w3"].astype(np.float32).T.copy()
        self.exp = arrays["exp"].astype(np.float64)

    def weights(self, ctx: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """ctx (M, L) codes, pos (M,) -> (M, A) unnormalised probabilities: integers,
        held in float64 (every value below 2**53, so every step is exact)."""
        idx = torch.from_numpy(np.ascontiguousarray(ctx + self.col_base, dtype=np.int64))
        acc = np.add(F.embedding_bag(idx, self.table1, mode="sum").numpy(), self.pos1[pos])
        a1 = np.clip(_rescale(acc, self.mult[0]), 0, 255).astype(np.float32)
        a2 = np.clip(_layer(a1, self.w2, self.bias[0], self.mult[1]), 0, 255).astype(np.float32)
        logits = _layer(a2, self.w3, self.bias[1], self.mult[2])
        d = np.subtract(logits.max(1, keepdims=True), logits, out=logits)
        np.minimum(d, EXP_TABLE - 1, out=d)
        return np.take(self.exp, d.astype(np.intp))

    def rows(self, ctx: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """(M, A) float64 coder rows (uint16 integers) for contexts ``ctx``."""
        return coder_rows(self.weights(ctx, pos))


def coder_rows(v: np.ndarray) -> np.ndarray:
    """Unnormalised integer weights (M, A) -> the coder's rows: ``quantize_rows`` of
    their proportions, computed in float64 in place (the same correctly rounded steps on
    integers below 2**53, so the same integers) and returned as float64."""
    q = v / v.sum(1, keepdims=True)
    q *= TABLE_SCALE - q.shape[1]
    np.rint(q, out=q)
    np.maximum(q, 1.0, out=q)
    total = q.sum(1)
    top = q.argmax(1)
    rows = np.arange(len(q))
    qmax = q[rows, top]
    excess = np.ceil((qmax - P_MAX * total) / (1.0 - P_MAX))
    q[rows, top] = qmax - np.maximum(excess, 0.0)
    return q


def exp_table() -> np.ndarray:
    return np.rint(EXP_SCALE * np.exp(-np.arange(EXP_TABLE) / LOGIT_STEPS)).astype(np.int64)


def quantized(net: LevelNet, ctx: torch.Tensor, pos: torch.Tensor) -> dict[str, np.ndarray]:
    """The integer arrays of a trained level network; activation steps from the largest
    activations on (a sample of) its training contexts."""
    with torch.no_grad():
        a1, a2 = net.hidden(ctx, pos)
        step1 = max(float(a1.max()), 1e-6) / 255.0
        step2 = max(float(a2.max()), 1e-6) / 255.0
    emb, e_scale = _int8(net.embed.weight, None)
    w1, s1 = _int8(net.l1.weight, 1)
    unit1 = e_scale[0] * s1  # accumulator units per real unit of each hidden unit
    pos1 = net.pos.weight.detach().double().numpy() + net.l1.bias.detach().double().numpy()
    w2, s2 = _int8(net.l2.weight, 1)
    w3, s3 = _int8(net.l3.weight, 1)
    return {
        "embed": emb,
        "w1": w1,
        "pos1": _bias(pos1 * unit1),
        "m1": _fixed(1.0 / (unit1 * step1)),
        "w2": w2,
        "b2": _bias(net.l2.bias.detach().double().numpy() * s2 / step1),
        "m2": _fixed(step1 / (s2 * step2)),
        "w3": w3,
        "b3": _bias(net.l3.bias.detach().double().numpy() * s3 / step2),
        "m3": _fixed(step2 * LOGIT_STEPS / s3),
    }


def checked_level(tensors, t: int, n_codes: int, n_positions: int) -> dict[str, np.ndarray]:
    """The arrays of level t, checked against the shapes, dtypes and ranges a fit writes
    (which bound every integer of inference below 2**63 and every float32 partial sum
    below 2**24)."""
    cols = columns(t)
    n_levels_used = len({lv for _, _, lv in cols})
    want = {
        "embed": ((n_levels_used * (n_codes + 1), EMBED), np.int8),
        "w1": ((HIDDEN, len(cols) * EMBED), np.int8),
        "pos1": ((n_positions, HIDDEN), np.int32),
        "m1": ((HIDDEN,), np.int64),
        "w2": ((HIDDEN, HIDDEN), np.int8),
        "b2": ((HIDDEN,), np.int32),
        "m2": ((HIDDEN,), np.int64),
        "w3": ((n_codes, HIDDEN), np.int8),
        "b3": ((n_codes,), np.int32),
        "m3": ((n_codes,), np.int64),
    }
    out = {}
    for name, (shape, dtype) in want.items():
        a = tensors[f"{t}.{name}"].numpy()
        if a.shape != shape or a.dtype != dtype:
            raise ValueError(f"level {t} {name} is {a.dtype} {a.shape}, expected {shape}")
        if name.startswith("m") and (a.min() < 1 or a.max() >= MULT_LIMIT):
            raise ValueError(f"level {t} {name} is out of range")
        if name in ("pos1", "b2", "b3") and np.abs(a.astype(np.int64)).max() >= BIAS_LIMIT:
            raise ValueError(f"level {t} {name} is out of range")
        out[name] = a.copy()
    return out
