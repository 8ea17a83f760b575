"""A learned code prior: a small causal network over the code grid, run in integers.

As VQ-VAE pairs its codes with an autoregressive prior, this prior gives each symbol
``(i, j, t)`` of a code grid ``(h, w, T)`` a distribution from the symbols decoded
before it (cells in raster order, levels within a cell, as
:class:`~discretae.compression.prior.CodePrior` codes them):

- the codes of six neighbouring cells already decoded (left, above, above-left,
  above-right, two to the left, two above) at levels ``t - 3 .. t``;
- the cell's own codes at levels ``t - 4 .. t - 1``;
- the cell's position.

One network per level: every context code is embedded (``EMBED`` numbers, one table per
source level, one more row for "outside the grid"), the embeddings and a position vector
feed two hidden layers of ``HIDDEN`` ReLU units, and a linear layer gives one logit per
code. It is trained in float (Adam, cross-entropy, on the training codes) and then
quantized after training: int8 embeddings and weights, activations held as integers in
[0, 255], integer biases, per-unit integer multipliers and a right shift between layers,
logits in steps of ``1 / LOGIT_STEPS`` nat and an exponential read from a stored integer
table. Every step of inference is integer arithmetic (the two dense layers run as float32
products whose every partial sum is an integer below 2**24, so exact in any order), so
the encoder and the decoder get the same integer distribution on any machine, which
``CodePrior``'s quantization (``quantize_rows``, :func:`coder_rows`) turns into the coder's rows.

Measured on Fashion-MNIST codes (rvq 7x7, 256 codes, 4 levels, 12 epochs; the network
trained on 54k train images' codes, 2,000 test images, real archives;
``benchmarks/rate_distortion.py --prior auto``): 24.4 / 59.8 / 97.2 / 136.5 bytes per image
for 1 / 2 / 3 / 4 levels, where the context tables take 30.9 / 69.1 / 108.4 / 149.5: the
first level gains most (21%; its tables see two neighbours through 16 classes), the
others 4-7%. It adds 0.2 MB to the model file (1.63 MB in all) and about 0.5 ms per image
per level to decoding on one CPU thread (a network call per slot, over all images).
"""

from __future__ import annotations

import hashlib
import json

import constriction
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from discretae.compression.prior import MIN_BITS_PER_SYMBOL, P_MAX, TABLE_SCALE
from discretae.core.errors import DiscretaeError

NEIGHBOURS = ((0, -1), (-1, 0), (-1, -1), (-1, 1), (0, -2), (-2, 0))
NEIGHBOUR_LEVELS = 4  # levels t-3..t of each neighbour
OWN_LEVELS = 4  # levels t-4..t-1 of the cell itself
EMBED = 16
HIDDEN = 128
LOGIT_STEPS = 32  # logits in steps of 1/32 nat
EXP_TABLE = 32 * 24  # exp(-d / 32) for d < 768: below 2**-34 of the top beyond
EXP_SCALE = 2**24
SHIFT = 20  # multipliers are fixed point with 20 fraction bits
BATCH = 4096
MIN_STEPS, MAX_STEPS, EPOCHS = 300, 2400, 3
MAX_SYMBOLS = 2**22  # training symbols per level held at once (images drawn beyond)
BIAS_LIMIT = 2**30  # |integer biases| stay below, so every accumulator is below 2**31
MULT_LIMIT = 2**22  # multipliers stay below: accumulator times multiplier below 2**53
PAD = 2  # cells of "outside" around the grid (the widest neighbour offset)


def _columns(t: int) -> list[tuple[int, int, int]]:
    """(di, dj, level) of each context code of a level-t symbol."""
    cols = [
        (di, dj, lv)
        for di, dj in NEIGHBOURS
        for lv in range(max(0, t - NEIGHBOUR_LEVELS + 1), t + 1)
    ]
    return cols + [(0, 0, lv) for lv in range(max(0, t - OWN_LEVELS), t)]


def _padded(sym: np.ndarray, n_codes: int) -> np.ndarray:
    """(n, h, w, T) -> (n, h + PAD, w + 2 PAD, T) with ``n_codes`` ("outside") around."""
    n, h, w, levels = sym.shape
    out = np.full((n, h + PAD, w + 2 * PAD, levels), n_codes, dtype=np.int64)
    out[:, PAD:, PAD : PAD + w] = sym
    return out


def _context(pad: np.ndarray, cols, i: int, j: int) -> np.ndarray:
    """(n, L) context codes of cell (i, j) from the padded symbols."""
    return np.stack([pad[:, PAD + i + di, PAD + j + dj, lv] for di, dj, lv in cols], 1)


def _all_contexts(sym: np.ndarray, n_codes: int, t: int) -> np.ndarray:
    """(n, h, w, L) context codes of every level-t symbol of known codes."""
    pad = _padded(sym, n_codes)
    _, h, w, _ = sym.shape
    cols = _columns(t)
    return np.stack(
        [pad[:, PAD + di : PAD + di + h, PAD + dj : PAD + dj + w, lv] for di, dj, lv in cols], -1
    )


class _LevelNet(nn.Module):
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


class _IntLevel:
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


def _exp_table() -> np.ndarray:
    return np.rint(EXP_SCALE * np.exp(-np.arange(EXP_TABLE) / LOGIT_STEPS)).astype(np.int64)


def _quantized(net: _LevelNet, ctx: torch.Tensor, pos: torch.Tensor) -> dict[str, np.ndarray]:
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


class LearnedPrior:
    """A learned prior over code symbols ``(h, w, T)`` in ``[0, A)``, with the interface of
    :class:`~discretae.compression.prior.CodePrior` (``encode_block``, ``decode_block``,
    ``cost_bits``, ``max_symbols``, ``digest``, ``config``, ``to_tensors``)."""

    kind = "learned"

    def __init__(self, grid, n_levels: int, n_codes: int, levels: list[dict], exp=None, info=None):
        self.grid = (int(grid[0]), int(grid[1]))
        self.n_levels, self.n_codes = int(n_levels), int(n_codes)
        self.exp = _exp_table() if exp is None else exp
        self.arrays = levels
        self.info = dict(info or {})  # stored in the config, outside the digest
        self.choice: dict | None = None  # how fit_prior chose this prior
        self.nets = []
        for t, arrays in enumerate(levels):
            arrays = {**arrays, "exp": self.exp}
            self.nets.append(_IntLevel(arrays, _columns(t)))

    # ------------------------------------------------------------------ building
    @classmethod
    def fit(
        cls,
        codes: np.ndarray,
        n_codes: int,
        *,
        seed: int = 0,
        steps: int | None = None,
        progress=None,
    ) -> LearnedPrior:
        """Train the level networks on training codes (N, h, w, T) and quantize them.

        ``steps`` per level: by default three epochs of ``BATCH`` symbols, within
        [MIN_STEPS, MAX_STEPS]. Codes of more than ``MAX_SYMBOLS`` symbols a level are
        first cut to a seeded draw of whole images. ``progress(t, step, steps, loss)`` is
        called as it goes.
        """
        codes = np.asarray(codes)
        if codes.ndim != 4 or len(codes) == 0:
            raise DiscretaeError(f"codes must be (N, h, w, T) with N >= 1, got {codes.shape}")
        if codes.min() < 0 or codes.max() >= n_codes:
            raise DiscretaeError(
                f"codes must lie in [0, {n_codes}), got [{codes.min()}, {codes.max()}]"
            )
        if n_codes < 2:
            raise DiscretaeError("a learned prior needs at least 2 codes")
        n, h, w, n_levels = codes.shape
        if n * h * w > MAX_SYMBOLS:  # more than the steps can visit: a seeded subset
            keep = np.random.default_rng(seed).choice(n, MAX_SYMBOLS // (h * w), replace=False)
            codes = codes[np.sort(keep)]
            n = len(codes)
        gen = torch.Generator().manual_seed(seed)
        torch_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        pos = torch.arange(h * w).repeat(n)
        y_all = torch.from_numpy(codes.astype(np.int64).reshape(n * h * w, n_levels))
        levels = []
        small = np.int16 if n_codes < 2**15 - 1 else np.int32
        try:
            for t in range(n_levels):
                ctx = torch.from_numpy(
                    _all_contexts(codes, n_codes, t).reshape(n * h * w, -1).astype(small)
                )
                y = y_all[:, t].contiguous()
                net = _LevelNet(n_codes, _columns(t), h * w)
                total = steps or min(MAX_STEPS, max(MIN_STEPS, EPOCHS * len(y) // BATCH))
                opt = torch.optim.Adam(net.parameters(), 2e-3)
                sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=total)
                for step in range(total):
                    b = torch.randint(len(y), (min(BATCH, len(y)),), generator=gen)
                    loss = F.cross_entropy(net(ctx[b].long(), pos[b]), y[b])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    sched.step()
                    if progress is not None:
                        progress(t, step, total, loss.item())
                sample = torch.randperm(len(y), generator=gen)[:65536]
                levels.append(_quantized(net, ctx[sample].long(), pos[sample]))
        finally:
            torch.random.set_rng_state(torch_state)
        return cls((h, w), n_levels, n_codes, levels)

    # ------------------------------------------------------------------ storage
    def config(self) -> dict:
        return {
            "kind": self.kind,
            "grid": list(self.grid),
            "n_levels": self.n_levels,
            "n_codes": self.n_codes,
            "embed": EMBED,
            "hidden": HIDDEN,
            "logit_steps": LOGIT_STEPS,
            "shift": SHIFT,
            **({"info": self.info} if self.info else {}),
        }

    def to_tensors(self) -> dict[str, torch.Tensor]:
        out = {"exp": torch.from_numpy(self.exp.astype(np.int64))}
        for t, arrays in enumerate(self.arrays):
            for name in _IntLevel.NAMES:
                out[f"{t}.{name}"] = torch.from_numpy(np.ascontiguousarray(arrays[name]))
        out["sha256"] = torch.frombuffer(bytearray(self.digest()), dtype=torch.uint8)
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], config: dict) -> LearnedPrior:
        """Inverse of ``to_tensors`` + ``config``; DiscretaeError for anything a fit could
        not have written (shapes, dtypes, ranges, sha256)."""
        try:
            grid = tuple(int(g) for g in config["grid"])
            n_levels, n_codes = int(config["n_levels"]), int(config["n_codes"])
            fixed = (config["embed"], config["hidden"], config["logit_steps"], config["shift"])
            if fixed != (EMBED, HIDDEN, LOGIT_STEPS, SHIFT):
                raise ValueError(f"its network sizes {fixed} are not this version's")
            if len(grid) != 2 or min(grid) < 1 or n_levels < 1 or not 2 <= n_codes <= 2**15:
                raise ValueError(f"grid {grid}, {n_levels} levels of {n_codes} codes")
            levels = [
                _checked_level(tensors, t, n_codes, grid[0] * grid[1]) for t in range(n_levels)
            ]
            exp = tensors["exp"].numpy()
            if exp.dtype != np.int64 or exp.shape != (EXP_TABLE,):
                raise ValueError("its exponential table has the wrong shape")
            if exp.min() < 0 or exp.max() > EXP_SCALE or exp[0] < 1:
                raise ValueError("its exponential table is out of range")
            prior = cls(grid, n_levels, n_codes, levels, exp.copy(), config.get("info"))
            if prior.digest() != bytes(tensors["sha256"].numpy().tobytes()):
                raise ValueError("its tensors or config do not give its sha256")
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
            raise DiscretaeError(f"the model's learned code prior is corrupt: {e}") from None
        return prior

    def digest(self) -> bytes:
        cfg = {k: v for k, v in self.config().items() if k != "info"}
        h = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode())
        h.update(self.exp.astype("<i8").tobytes())
        for arrays in self.arrays:
            for name in _IntLevel.NAMES:
                a = np.ascontiguousarray(arrays[name])
                h.update(f"{name}|{a.dtype.str}|{a.shape}".encode())
                h.update(a.tobytes())
        return h.digest()

    def n_bytes(self) -> int:
        return sum(a.nbytes for arrays in self.arrays for a in arrays.values()) + self.exp.nbytes

    # ------------------------------------------------------------------ coding
    def _rows_by_slot(self, sym: np.ndarray, order):
        """(slot, coder rows (n, A)) for the slots ``order`` of known codes (n, h, w, l):
        one slot at a time over every image, as the decoder sees them."""
        pad = _padded(sym, self.n_codes)
        w = self.grid[1]
        pos = np.empty(len(sym), dtype=np.int64)
        for i, j, t in order:
            pos.fill(i * w + j)
            yield (i, j, t), self.nets[t].rows(_context(pad, _columns(t), i, j), pos)

    def _all_rows(self, sym: np.ndarray) -> list[np.ndarray]:
        """Per level t < l, the coder rows (n, h, w, A) of every symbol of known codes."""
        n, h, w, levels = sym.shape
        out = [np.empty((n, h, w, self.n_codes)) for _ in range(levels)]
        for (i, j, t), rows in self._rows_by_slot(sym, self._slots(levels)):
            out[t][:, i, j] = rows
        return out

    def encode_block(self, codes: np.ndarray) -> np.ndarray:
        """codes (n, h, w, l) ints in [0, A), l <= T -> ANS words (uint32)."""
        sym = np.ascontiguousarray(codes, dtype=np.int64)
        coder = constriction.stream.stack.AnsCoder()
        family = constriction.stream.model.Categorical(perfect=False)
        for (i, j, t), rows in self._rows_by_slot(sym, reversed(self._slots(sym.shape[3]))):
            coder.encode_reverse(sym[:, i, j, t].astype(np.int32), family, rows)
        return coder.get_compressed()

    def _slots(self, n_levels: int):
        h, w = self.grid
        return [(i, j, t) for i in range(h) for j in range(w) for t in range(n_levels)]

    def decode_block(self, words: np.ndarray, n: int, n_levels: int) -> np.ndarray:
        """ANS words -> codes (n, h, w, l) int64; DiscretaeError unless the words hold
        exactly these symbols."""
        h, w = self.grid
        # "outside" everywhere until decoded: a context reads only symbols decoded before
        pad = np.full((n, h + PAD, w + 2 * PAD, n_levels), self.n_codes, dtype=np.int64)
        try:
            coder = constriction.stream.stack.AnsCoder(np.asarray(words, dtype=np.uint32))
            family = constriction.stream.model.Categorical(perfect=False)
            for i, j, t in self._slots(n_levels):
                ctx = _context(pad, _columns(t), i, j)
                pos = np.full(n, i * w + j)
                decoded = coder.decode(family, self.nets[t].rows(ctx, pos))
                pad[:, PAD + i, PAD + j, t] = decoded
            exact = coder.is_empty()
        except Exception as e:  # constriction reports malformed words as ValueError
            raise DiscretaeError(
                f"corrupt archive: the code payload does not decode ({e})"
            ) from None
        if not exact:
            raise DiscretaeError("corrupt archive: the code payload holds more data than its codes")
        return pad[:, PAD:, PAD : PAD + w].copy()

    def slot_table(self, sym: np.ndarray, i: int, j: int, t: int) -> np.ndarray:
        """Coder rows (n, A) of slot (i, j, t) from the symbols of ``sym`` (n, h, w, l)
        decoded before it (the rate-aware encoder's view)."""
        n, h, w, _ = sym.shape
        outside = np.full(n, self.n_codes, dtype=np.int64)
        ctx = np.stack(
            [
                sym[:, i + di, j + dj, lv] if i + di >= 0 and 0 <= j + dj < w else outside
                for di, dj, lv in _columns(t)
            ],
            1,
        )
        return self.nets[t].rows(ctx, np.full(n, i * w + j))

    def max_symbols(self, n_words: int) -> int:
        return int((32 * n_words + 64) / MIN_BITS_PER_SYMBOL)

    def cost_bits(self, codes: np.ndarray) -> float:
        """Information content (bits) of codes (n, h, w, l) under the integer network."""
        sym = np.ascontiguousarray(codes, dtype=np.int64)
        total = 0.0
        every = np.arange(len(sym))
        for (i, j, t), rows in self._rows_by_slot(sym, self._slots(sym.shape[3])):
            p = rows[every, sym[:, i, j, t]] / rows.sum(1)
            total -= float(np.log2(p).sum())
        return total


def _checked_level(tensors, t: int, n_codes: int, n_positions: int) -> dict[str, np.ndarray]:
    """The arrays of level t, checked against the shapes, dtypes and ranges a fit writes
    (which bound every integer of inference below 2**63 and every float32 partial sum
    below 2**24)."""
    cols = _columns(t)
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


def bits_per_symbol(prior, codes: np.ndarray) -> list[float]:
    """Mean bits per symbol of each level of codes (n, h, w, T) under ``prior``."""
    n, h, w, levels = codes.shape
    out, before = [], 0.0
    for t in range(levels):
        total = prior.cost_bits(codes[..., : t + 1])
        out.append((total - before) / (n * h * w))
        before = total
    return out
