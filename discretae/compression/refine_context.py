"""Refinement symbols coded from their neighbours (archive format 4, a block's mode 1):
each symbol predicted from the symbols decoded before it and modelled in a context of
their size and sign, as JPEG-LS and CALIC code pixels.

The residual q (``discretae.compression.refine``) is far from independent between
neighbouring pixels and channels: where the codes' image is off by a steady amount, as in
a flat colour area of clip art, the same q repeats. Measured on 2,000 Fashion-MNIST test
images (rvq 7x7, 256 codes, 1-2 levels, max error 8 and 32) this layout codes the
refinement in 10-19% fewer bytes than the classes alone; on 998 openclipart test images
(colour, 64x64) whole refined archives are 27-45% smaller (benchmarks/rate_distortion.py).

Order. Per block, channel by channel, and in each channel coarse to fine over lattices of
the pixels, as interlaced PNG and FLIF do: first the pixel (0, 0); then, for s = side / 2,
..., 2, 1 (side: the smallest power of two at least the image's height and width), with
the pixels at multiples of 2 s known, the phases B (the pixels at (s, s) from them), C
(at (0, s)) and D (at (s, 0)). Every pixel of B has its four diagonal neighbours at
distance s known; every pixel of C and D its four horizontal and vertical ones, and D
also its four diagonal ones, in C. Within a step, symbols are coded context by context
(ascending), and in raster order (image, row, column) within a context, so that a step
decodes in a few vectorised calls.

Prediction. q is predicted by the median of its four neighbours (the diagonal ones in B,
the others in C and D; none for the first pixel, prediction 0; outside the image a
neighbour counts as 0; the median of four is the floor of the mean of the middle two),
plus, from the second channel on, the previous channel's error against its own
neighbours' median at the same pixel. The coded symbol is ``r = q - prediction`` wrapped
into [-top, top] (modulo 2 top + 1), so every r decodes to a q in range.

Context. ``((class * 4 + group) * 6 + activity) * 3 + sign``: the class from the codes
(``Refinement.classes``); the group (the first pixel; a coarse lattice, s >= 2; B at s = 1;
C and D at s = 1); the activity, the sum of |q| over the neighbours (B: 4, C: 4, D: 8)
plus twice the sum of |q| of the earlier channels at the pixel, in six bins (0, 1, 2-3,
4-7, 8-15, 16+); the sign of the neighbours' sum of q (negative, zero, positive).

Stream (after the block's mode): the number of contexts present (``Uniform(N_CONTEXTS +
1)``), their indices ascending (``Uniform(N_CONTEXTS)``), ``z``, ``s`` and ``theta`` of each
as 16-bit integers (the same two-sided geometric as the classes), then the symbols.
"""

from __future__ import annotations

import constriction
import numpy as np

from discretae.core.errors import DiscretaeError

N_GROUPS = 4
ACTIVITY = (1, 2, 4, 8, 16)  # bin edges of the activity
N_ACTIVITY = len(ACTIVITY) + 1
N_SIGNS = 3
DIAGONAL = ((-1, -1), (-1, 1), (1, -1), (1, 1))
CROSS = ((0, -1), (0, 1), (-1, 0), (1, 0))


def n_contexts(n_classes: int) -> int:
    return n_classes * N_GROUPS * N_ACTIVITY * N_SIGNS


class _Walk:
    """The decode order of one block, shared by encoder and decoder: for each channel and
    step, the contexts and predictions of its symbols from the symbols stored so far.

    Args:
        cls: (n, C, H, W) class of every symbol (from the codes).
        top: symbols lie in [-top, top].
    """

    def __init__(self, cls: np.ndarray, top: int) -> None:
        n, c, h, w = cls.shape
        # the class's part of every context; all contexts below 2**15: int16 arithmetic
        self.cls = cls.astype(np.int16) * np.int16(N_GROUPS * N_ACTIVITY * N_SIGNS)
        self.top, self.shape = top, cls.shape
        # |q| <= 256, so int16 holds these and every sum plan() forms from them
        self.padded = np.zeros((n, c, h + 2, w + 2), dtype=np.int16)  # a zero border
        self.q = self.padded[:, :, 1:-1, 1:-1]
        self.err = np.zeros((n, c, h, w), dtype=np.int16)  # q - spatial prediction
        self.earlier = np.zeros((n, h, w), dtype=np.int16)  # sum |q| of earlier channels
        self.side = 1 << max(0, max(h, w) - 1).bit_length()  # a power of 2, >= H and W

    def steps(self):
        """Yield (channel, spacing s, row, column) in decode order: the first pixel, then
        for s = side / 2, ..., 1 the phases B, C, D of the lattice of spacing s, whose
        pixels lie at (row + 2 s i, column + 2 s j)."""
        h, w = self.shape[2:]
        for ch in range(self.shape[1]):
            yield ch, self.side, 0, 0
            s = self.side // 2
            while s >= 1:
                for r0, c0 in ((s, s), (0, s), (s, 0)):
                    if r0 < h and c0 < w:
                        yield ch, s, r0, c0
                s //= 2

    def _at(self, step, di: int = 0, dj: int = 0):
        """The values at (row + di, column + dj) of one step's pixels, 0 outside the image."""
        ch, s, r0, c0 = step
        h, w = self.shape[2:]
        if s == 1:  # neighbours at most one pixel out: a slice of the bordered array
            ni, nj = len(range(r0, h, 2)), len(range(c0, w, 2))
            r, c = r0 + 1 + di, c0 + 1 + dj
            return self.padded[:, ch, r : r + 2 * ni - 1 : 2, c : c + 2 * nj - 1 : 2]
        rows, cols = np.arange(r0, h, 2 * s) + di, np.arange(c0, w, 2 * s) + dj
        inside = ((rows >= 0) & (rows < h))[:, None] & ((cols >= 0) & (cols < w))[None, :]
        v = self.q[:, ch][:, rows.clip(0, h - 1)[:, None], cols.clip(0, w - 1)[None, :]]
        return v if inside.all() else v * inside

    def _slice(self, step):
        ch, s, r0, c0 = step
        return slice(r0, None, 2 * s), slice(c0, None, 2 * s)

    def plan(self, step) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(context, spatial prediction, prediction) of one step's symbols, (n, ni, nj)."""
        ch, s, r0, c0 = step
        rs, cs = self._slice(step)
        ctx = self.cls[:, ch, rs, cs]
        if s == self.side:
            zero = np.zeros(ctx.shape, dtype=np.int16)
            spatial, activity, signed, group = zero, zero, zero, 0
        else:
            offsets = DIAGONAL if (r0, c0) == (s, s) else CROSS
            near = [self._at(step, di * s, dj * s) for di, dj in offsets]
            a, b, c, d = near  # the median of four: the sum less the extremes, halved
            low = np.minimum(np.minimum(a, b), np.minimum(c, d))
            high = np.maximum(np.maximum(a, b), np.maximum(c, d))
            spatial = (a + b + c + d - low - high) >> 1
            if (r0, c0) == (s, 0):
                near = near + [self._at(step, di * s, dj * s) for di, dj in DIAGONAL]
            activity, signed = np.abs(near[0]), near[0].copy()
            for v in near[1:]:
                activity += np.abs(v)
                signed += v
            group = 1 if s > 1 else 2 if (r0, c0) == (1, 1) else 3
        pred = spatial
        if ch > 0:
            pred = spatial + self.err[:, ch - 1, rs, cs]
            activity = activity + 2 * self.earlier[:, rs, cs]
        act = (activity >= ACTIVITY[0]).astype(np.int16)  # its bin: the edges it reaches
        for edge in ACTIVITY[1:]:
            act += activity >= edge
        ctx = ctx + np.int16(group * N_ACTIVITY * N_SIGNS + 1)
        ctx += act * np.int16(N_SIGNS)
        ctx += np.sign(signed)
        return ctx, spatial, pred

    def wrap(self, v: np.ndarray) -> np.ndarray:
        return np.mod(v + self.top, 2 * self.top + 1) - self.top

    def store(self, step, q: np.ndarray, spatial: np.ndarray) -> None:
        rs, cs = self._slice(step)
        self.q[:, step[0], rs, cs] = q
        if step[0] < self.shape[1] - 1:  # what a later channel reads
            self.err[:, step[0], rs, cs] = q - spatial
            self.earlier[:, rs, cs] += np.abs(q)


def sorted_runs(ctx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(order: a stable sort of the flattened contexts, the contexts present, their counts).
    Contexts are 16-bit integers in [0, 2**15) (int16 or uint16): a radix sort."""
    flat = ctx.ravel().view(np.uint16)
    order = np.argsort(flat, kind="stable")
    counts = np.bincount(flat)
    present = np.flatnonzero(counts)
    return order, present, counts[present]


def encode(coder, q: np.ndarray, cls: np.ndarray, top: int, n_all: int, fit_params, model) -> None:
    """Push the symbols q (n, C, H, W) in [-top, top] onto the ANS coder (decoded
    before anything already on it). ``fit_params(symbols) -> params`` and
    ``model(params, top) -> constriction model`` are the refinement's own."""
    walk = _Walk(cls, top)
    runs = []  # (context, symbols + top) in decode order
    for step in walk.steps():
        ctx, spatial, pred = walk.plan(step)
        rs, cs = walk._slice(step)
        qs = q[:, step[0], rs, cs].astype(np.int16)
        r = walk.wrap(qs - pred).ravel()
        order, present, counts = sorted_runs(ctx)
        r = r[order]
        start = 0
        for k, cnt in zip(present.tolist(), counts.tolist(), strict=True):
            runs.append((k, r[start : start + cnt]))
            start += cnt
        walk.store(step, qs, spatial)
    present = sorted({k for k, _ in runs})
    by = {k: [] for k in present}
    for k, r in runs:
        by[k].append(r)
    params = {k: fit_params(np.concatenate(by[k])) for k in present}
    models = {k: model(params[k], top) for k in present}
    for k, r in reversed(runs):
        coder.encode_reverse((r + top).astype(np.int32), models[k])
    flat = np.array([v for k in present for v in params[k]], dtype=np.int32)
    if len(flat):
        coder.encode_reverse(flat, constriction.stream.model.Uniform(2**16))
    if present:
        coder.encode_reverse(np.array(present, dtype=np.int32),
                             constriction.stream.model.Uniform(n_all))  # fmt: skip
    coder.encode_reverse(np.array([len(present)], dtype=np.int32),
                         constriction.stream.model.Uniform(n_all + 1))  # fmt: skip


def decode(coder, cls: np.ndarray, top: int, n_all: int, model) -> np.ndarray:
    """The symbols q (n, C, H, W) int16 that :func:`encode` pushed; DiscretaeError when the
    words cannot be them."""
    n_present = int(coder.decode(constriction.stream.model.Uniform(n_all + 1), 1)[0])
    present = coder.decode(constriction.stream.model.Uniform(n_all), n_present).tolist()
    if any(b <= a for a, b in zip(present, present[1:], strict=False)):
        raise DiscretaeError("corrupt archive: the refinement's contexts are out of order")
    flat = coder.decode(constriction.stream.model.Uniform(2**16), 3 * n_present)
    models = {
        k: model(tuple(int(v) for v in flat[3 * i : 3 * i + 3]), top) for i, k in enumerate(present)
    }
    used = set()
    walk = _Walk(cls, top)
    for step in walk.steps():
        ctx, spatial, pred = walk.plan(step)
        order, here, counts = sorted_runs(ctx)
        r = np.empty(order.size, dtype=np.int16)
        start = 0
        for k, cnt in zip(here.tolist(), counts.tolist(), strict=True):
            if k not in models:
                raise DiscretaeError("corrupt archive: the refinement's contexts do not fit")
            r[order[start : start + cnt]] = coder.decode(models[k], cnt) - top
            used.add(k)
            start += cnt
        qs = walk.wrap(r.reshape(ctx.shape) + pred)
        walk.store(step, qs, spatial)
    q = np.ascontiguousarray(walk.q)
    if len(used) != len(models):
        raise DiscretaeError("corrupt archive: the refinement names contexts it does not use")
    return q
