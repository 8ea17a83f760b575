"""Transform refinement: the residual between an image and the image its codes decode to,
coded in 4x4 transform blocks with a quantizer step: the rate knob for a PSNR, where
:mod:`discretae.compression.refine` bounds every pixel's error.

With the step S >= 1 the encoder takes the residual ``r = x - base`` (``base``: the uint8
image the codes decode to), turns a 3-channel residual into three orthonormal components
(``COLOUR``: the channel sum, red minus blue, and green against the other two), pads each
component at the bottom and right by repeating its last row and column to a multiple of 4,
transforms every 4x4 block with the orthonormal DCT-II, and codes, for every coefficient
c, a symbol q near c / S (Rate-distortion quantization, below). The decoder outputs
``clip(round(base + inverse(q S)), 0, 255)``. Both transforms are orthonormal, so the
error's energy in pixels is that of the coefficients: the mean squared error is about
S^2 / 12 where the residual is large, and the residual's own where it quantizes to 0.
The 1/3 rounding (a dead zone, as video codecs quantize, ``dead_zone``) codes fewer
nonzero values than rounding to nearest for the same error: on openclipart at 64x64 over
the 16x16 rvq grid's first level, 1/3 gave 383 B at 32.4 dB where 1/4 gave 349 B at 31.7
(the same curve) and 1/2, with an 8x8 block, 10% more bytes at equal PSNR; 4x4 blocks
cost 2-9% less than 8x8 on the same residuals.

Rate-distortion quantization (the encoder's choice; the stream and the decoder are the
same for any q). A fixed dead zone treats every symbol alike, where a 1 costs many bits in
a class that is mostly 0 and few in a busy one. So ``quantize`` starts from the dead
zone, gives every symbol its class and every class its law as the stream would (from
the current q), and picks each magnitude from the nearest one, round(|c| / S), and the one
below, by squared error in steps plus ``RD_LAMBDA`` times its bits; twice, the second
time with the classes and laws of the first pass's q (as RDOQ does in video encoders,
here without a trellis, and ignoring how a choice moves its neighbours' classes). The
weight, ln 2 / 12 squared steps a bit, is half the slope of a uniform quantizer's
distortion at high rate (dD/dR = -2 ln 2 D, D = S^2 / 12): on 400 openclipart training
images over a 4x-downsampled base (no network, no test image), 1/4, 1/2, 3/4 and 1 of
that slope saved 3.9, 4.8, 4.3 and 3.1% of the bytes against the dead zone's curve at
equal PSNR (steps 80 to 28). Over the 16x16 rvq network's images of the 998 test images
(``benchmarks/rate_distortion.py``, each point beside its dead-zone archive) it saved
1.8-2.5% with 1 level, about 1% with 2 and 0.6% with 3.

Entropy model. Each symbol's class is (component, band, expectation, activity,
neighbourhood): its band is its frequency for the 6 lowest (row + column < 3) and one of
3 groups above (``BAND``; 16 frequencies cost as much on 998 images and more on 256, in
parameters); its expectation (archive format 6) is the bucket of the residual the model
expects in the block (:func:`expectation`: the refinement table's mean |residual| of the
block's pixels, looked up from the codes alone, against 1/4, 1/2, 1 and 2 steps); its
neighbourhood is ``min(|q_left| + |q_up|, 3)`` over the same component and frequency
in the blocks to the left and above (0 outside the image), its activity the number of
nonzero symbols of those two blocks in that component, in 4 buckets (``ACTIVITY``); the
decoder knows all of them by then, since it decodes the block positions by
anti-diagonals (``a + b`` = 0, 1, ...). Per class, the symbols follow a two-sided
geometric law (``refine.geometric_model``, signs equally likely) truncated at the
class's largest magnitude. On the openclipart residuals above, the neighbourhood saved
about 10% against the frequency alone, the activity 7-8% more, and the expectation with
format 6's shorter parameters 5-6% more (1 level, steps 80 to 28). A context from the
base image would be sharper but is floating point, which may differ between machines;
the first component's nonzero count in the block as a context of the other two saved 2%
alone and nothing on top of the expectation.

Block stream (ANS words, one per archive block). Format 6: a bit, then either the number
of classes present (``Uniform(n_classes + 1)``) and their indices in increasing order
(``Uniform(n_classes)``) or a mask of ``n_classes`` bits, whichever is shorter; per
present class its largest magnitude (``Uniform(top_bound(step) + 1)``) and, when it is
not 0, ``z`` (the share of zeros) and ``theta`` as 10-bit integers. Format 5: no bit,
the list, the largest magnitude ``Uniform(TOP_LIMIT)``, 16-bit parameters, no
expectation. Then, diagonal by diagonal and class by class in increasing order, the
class's symbols of that diagonal in (image, component, block row, frequency) order.
Classes whose symbols are all 0 code nothing after their parameters. Every probability
is an integer from correctly rounded float64 steps, so the stream decodes the same
everywhere; only the inverse transform is floating point, and it shapes no later symbol
(a machine that rounds one value differently moves that pixel by one).
"""

from __future__ import annotations

import math

import constriction
import numpy as np

from discretae.compression.archive import MAX_STEP
from discretae.compression.refine import PARAM, decode_exactly, geometric_model
from discretae.compression.refine_context import sorted_runs
from discretae.core.errors import DiscretaeError

SIDE = 4  # transform block side
N_FREQ = SIDE * SIDE
# the band a frequency (row u, column v of the block) is classed by: its own for the 6
# with u + v < 3, one shared by u + v = 3, one by 4, one by 5 and 6
_LOW = [(u, v) for u in range(SIDE) for v in range(SIDE) if u + v < 3]
BAND = np.array([_LOW.index((u, v)) if u + v < 3 else len(_LOW) + min(u + v, 5) - 3
                 for u in range(SIDE) for v in range(SIDE)])  # fmt: skip
N_BANDS = len(_LOW) + 3
N_NEIGHBOURS = 4  # min(|left| + |up|, 3)
ACTIVITY = (1, 3, 8)  # nonzero symbols in the left and upper blocks: 4 buckets
N_ACTIVITY = len(ACTIVITY) + 1
# format 6: the residual the model expects in a block (``expectation``), in 5 buckets
# against 1/4, 1/2, 1 and 2 steps, also keys the class (format 5: one bucket)
EXPECT_QUARTERS = (1, 2, 4, 8)
N_EXPECT = len(EXPECT_QUARTERS) + 1
LAYOUTS = (5, 6)  # the archive format versions whose transform stream this module writes
PARAM_BITS = 10  # format 6: z and theta as 10-bit integers (format 5: 16)
ROUND = 1.0 / 3.0
# rate-distortion quantization: bits weigh ln 2 / 12 squared steps (half the high-rate
# slope of a uniform quantizer's distortion, 2 ln 2 D with D = step^2 / 12; module
# docstring), over two passes of classes
RD_LAMBDA = math.log(2) / 12
RD_PASSES = 2
LARGEST = SIDE * 255 * math.sqrt(3)  # bounds |coefficient|: a block's sum, one component
TOP_LIMIT = 4096  # > the largest |q|, at step 1
_U16 = constriction.stream.model.Uniform(PARAM)
_U10 = constriction.stream.model.Uniform(2**PARAM_BITS)
_TOP = constriction.stream.model.Uniform(TOP_LIMIT)
_BIT = constriction.stream.model.Uniform(2)


def _dct(n: int) -> np.ndarray:
    k = np.arange(n)
    d = np.cos(np.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n)) * math.sqrt(2 / n)
    d[0] /= math.sqrt(2)
    return d


DCT = _dct(SIDE)
COLOUR = np.array([[1, 1, 1], [1, 0, -1], [-1, 2, -1]], dtype=np.float64)
COLOUR /= np.linalg.norm(COLOUR, axis=1, keepdims=True)


def check_step(step) -> int:
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
        raise DiscretaeError(
            f"the residual step must be an integer in [1, {MAX_STEP}], got {step!r}"
        )
    if not 1 <= step <= MAX_STEP:
        raise DiscretaeError(f"the residual step must lie in [1, {MAX_STEP}], got {step}")
    return int(step)


def top_bound(step: int) -> int:
    """The largest |q| a step can give, plus one for floating-point rounding: a class's
    top above it is a corrupt stream."""
    return int(LARGEST / step + ROUND) + 1


def n_classes(channels: int, layout: int = 6) -> int:
    expect = N_EXPECT if layout >= 6 else 1
    return channels * N_BANDS * expect * N_NEIGHBOURS * N_ACTIVITY


def expectation(means: np.ndarray | None, n: int, shape, step: int) -> np.ndarray:
    """The bucket (n, A, B) of the residual the model expects in each transform block:
    ``means`` (n, C, H, W) int, 16 x the mean |residual| the refinement table holds for
    every pixel (from the codes alone, so the decoder has it too; None: no table, bucket
    0), averaged over the block's pixels inside the image and its channels, counted in
    ``EXPECT_QUARTERS`` quarters of the step. Integer arithmetic: the same everywhere."""
    c, h, w = shape
    a, b = -(-h // SIDE), -(-w // SIDE)
    if means is None:
        return np.zeros((n, a, b), dtype=np.int64)
    v = np.zeros((n, c, a * SIDE, b * SIDE), dtype=np.int64)
    v[:, :, :h, :w] = means
    sums = v.reshape(n, c, a, SIDE, b, SIDE).sum(axis=(1, 3, 5))
    inside = np.zeros((a * SIDE, b * SIDE), dtype=np.int64)
    inside[:h, :w] = c
    counts = inside.reshape(a, SIDE, b, SIDE).sum(axis=(1, 3))
    # mean / 16 >= q / 4 * step  <=>  4 * sums >= q * step * 16 * counts
    edges = np.asarray(EXPECT_QUARTERS, dtype=np.int64)[:, None, None] * step * 16 * counts
    return (4 * sums[:, None] >= edges[None]).sum(1)


def forward(r: np.ndarray) -> np.ndarray:
    """Residuals (n, C, H, W) -> coefficients (n, C, A, B, 16) float64: A x B blocks."""
    r = np.asarray(r, dtype=np.float64)
    n, c, h, w = r.shape
    if c == 3:
        r = np.einsum("kc,nchw->nkhw", COLOUR, r)
    a, b = -(-h // SIDE), -(-w // SIDE)
    r = np.pad(r, ((0, 0), (0, 0), (0, a * SIDE - h), (0, b * SIDE - w)), mode="edge")
    blocks = r.reshape(n, c, a, SIDE, b, SIDE).transpose(0, 1, 2, 4, 3, 5)
    coef = np.einsum("ui,ncabij,vj->ncabuv", DCT, blocks, DCT, optimize=True)
    return coef.reshape(n, c, a, b, N_FREQ)


def inverse(coef: np.ndarray, shape) -> np.ndarray:
    """Coefficients (n, C, A, B, 16) -> residuals (n, C, H, W) float64, (C, H, W) = shape."""
    c, h, w = shape
    n, _, a, b, _ = coef.shape
    blocks = np.einsum(
        "ui,ncabuv,vj->ncabij", DCT, coef.reshape(n, c, a, b, SIDE, SIDE), DCT, optimize=True
    )
    r = blocks.transpose(0, 1, 2, 4, 3, 5).reshape(n, c, a * SIDE, b * SIDE)[:, :, :h, :w]
    if c == 3:
        r = np.einsum("kc,nkhw->nchw", COLOUR, r)
    return r


def dead_zone(x: np.ndarray, base: np.ndarray, step: int) -> np.ndarray:
    """Images x, base (n, C, H, W) uint8 -> symbols q (n, C, A, B, 16) int32, each
    coefficient rounded with the 1/3 dead zone alone."""
    coef = forward(x.astype(np.int16) - base.astype(np.int16))
    return (np.sign(coef) * np.floor(np.abs(coef) / step + ROUND)).astype(np.int32)


def quantize(
    x: np.ndarray, base: np.ndarray, step: int, expect: np.ndarray | None = None,
    layout: int = 6,
) -> np.ndarray:  # fmt: skip
    """Images x, base (n, C, H, W) uint8 -> the symbols q (n, C, A, B, 16) int32 the
    encoder codes: each magnitude the nearest one or the one below it, whichever costs
    less in squared error plus ``RD_LAMBDA`` times its bits under its class's law
    (module docstring, Rate-distortion quantization); ``expect`` and ``layout`` as
    ``encode_block`` takes them."""
    coef = forward(x.astype(np.int16) - base.astype(np.int16))
    u = np.abs(coef) / step
    sign = np.sign(coef).astype(np.int32)
    q = sign * np.floor(u + ROUND).astype(np.int32)  # the dead zone: the first classes
    expect = _expect(expect, q.shape[:1] + q.shape[2:4], layout)
    near = np.floor(u + 0.5).astype(np.int64)
    below = np.maximum(near - 1, 0)
    for _ in range(RD_PASSES):
        bits = _symbol_bits(q, expect)
        cost_near = (u - near) ** 2 + RD_LAMBDA * bits(near)
        cost_below = (u - below) ** 2 + RD_LAMBDA * bits(below)
        q = sign * np.where(cost_below <= cost_near, below, near).astype(np.int32)
    return q


def _symbol_bits(q: np.ndarray, expect: np.ndarray | None):
    """-> bits(m): the bits of magnitude m (an array shaped like q) at every symbol's
    place, under the two-sided geometric law its class would get from q (the class of
    every place from q's neighbours, its z and theta from q's symbols in that class;
    signs one bit; clamped away from 0 and 1)."""
    n, c, a, b, _ = q.shape
    k = np.zeros(q.shape, dtype=np.int64)
    for d in range(a + b - 1):
        rows, cols = _diagonal(a, b, d)
        k[:, :, rows, cols] = _classes(q, rows, cols, expect)
    mag = np.abs(q)
    size = int(k.max(initial=0)) + 1
    count = np.bincount(k.ravel(), minlength=size)
    nonzero = np.bincount(k.ravel(), weights=(mag != 0).ravel(), minlength=size)
    total = np.bincount(k.ravel(), weights=mag.ravel(), minlength=size)
    edge = 2.0**-PARAM_BITS
    z = np.clip(1.0 - nonzero / np.maximum(count, 1), edge, 1.0 - edge)[k]
    mean = np.where(nonzero > 0, total / np.maximum(nonzero, 1), 1.0)
    theta = np.clip(1.0 - 1.0 / mean, edge, 1.0 - edge)[k]
    zero, first = -np.log2(z), 1.0 - np.log2(1.0 - z) - np.log2(1.0 - theta)
    more = -np.log2(theta)

    def bits(m: np.ndarray) -> np.ndarray:
        return np.where(m == 0, zero, first + (np.maximum(m, 1) - 1) * more)

    return bits


def reconstruct(q: np.ndarray, base: np.ndarray, step: int) -> np.ndarray:
    """Symbols q and the base images (n, C, H, W) uint8 -> the decoded images (uint8)."""
    r = inverse(q.astype(np.float64) * step, base.shape[1:])
    return np.clip(np.rint(base + r), 0, 255).astype(np.uint8)


def _diagonal(a: int, b: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    """Block positions (rows, cols) on the anti-diagonal row + col = d, rows ascending."""
    rows = np.arange(max(0, d - b + 1), min(a, d + 1))
    return rows, d - rows


def _classes(
    q: np.ndarray, rows: np.ndarray, cols: np.ndarray, expect: np.ndarray | None = None
) -> np.ndarray:
    """Classes (n, C, len(rows), 16) uint16 of the symbols at those block positions,
    from their left and upper neighbours in q (decoded ones, on the decoder's side) and,
    format 6, ``expect`` (n, A, B): the block's ``expectation`` bucket (None: format 5)."""
    n, c = q.shape[:2]
    near = np.zeros((n, c, len(rows), N_FREQ), dtype=np.int64)
    left, up = cols > 0, rows > 0
    near[:, :, left] += np.abs(q[:, :, rows[left], cols[left] - 1])
    near[:, :, up] += np.abs(q[:, :, rows[up] - 1, cols[up]])
    busy = np.zeros((n, c, len(rows), 1), dtype=np.int64)
    busy[:, :, left] += (q[:, :, rows[left], cols[left] - 1] != 0).sum(-1, keepdims=True)
    busy[:, :, up] += (q[:, :, rows[up] - 1, cols[up]] != 0).sum(-1, keepdims=True)
    act = np.searchsorted(np.asarray(ACTIVITY), busy, side="right")
    comp = np.arange(c)[None, :, None, None]
    band = BAND[None, None, None, :]
    k = comp * N_BANDS + band
    if expect is not None:
        k = k * N_EXPECT + expect[:, rows, cols][:, None, :, None]
    k = (k * N_ACTIVITY + act) * N_NEIGHBOURS + np.minimum(near, 3)
    return k.astype(np.uint16)


def _params(sym: np.ndarray, bits: int = 16) -> tuple[int, int, int]:
    """(top, z, theta) of one class's symbols: its largest magnitude, the share of zeros
    and the geometric ratio of the magnitudes, as ``bits``-bit integers."""
    mag = np.abs(sym)
    top = int(mag.max())
    nonzero = mag[mag != 0]
    z = 1.0 - nonzero.size / mag.size
    theta = 1.0 - 1.0 / float(nonzero.mean()) if nonzero.size else 0.0
    one = 2**bits
    return (top, *(int(min(one - 1, max(1, round(v * one)))) for v in (z, theta)))


def _model(params: tuple[int, int, int], bits: int = 16):
    top, z, theta = params
    shift = 16 - bits  # the law takes 16-bit parameters
    return geometric_model((z << shift, PARAM // 2, theta << shift), top)


def _param_coding(layout: int, step: int):
    """(bits of z and theta, their uniform model, the uniform model of a class's top)
    in format ``layout``'s stream."""
    if layout < 6:
        return 16, _U16, _TOP
    return PARAM_BITS, _U10, constriction.stream.model.Uniform(top_bound(step) + 1)


def encode_block(
    x: np.ndarray, base: np.ndarray, step: int, expect: np.ndarray | None = None,
    layout: int = 6, rd: bool = True,
) -> np.ndarray:  # fmt: skip
    """Images x, base (n, C, H, W) uint8 -> the block's ANS words (uint32), in format
    ``layout``'s stream; format 6 keys the classes by ``expect`` (n, A, B), the
    blocks' ``expectation`` buckets (None: all 0). ``rd`` False quantizes with the dead
    zone alone (the benchmark's peer)."""
    step = check_step(step)
    q = quantize(x, base, step, expect, layout) if rd else dead_zone(x, base, step)
    n, c, a, b = q.shape[:4]
    expect = _expect(expect, (n, a, b), layout)
    bits, param_model, top_model = _param_coding(layout, step)
    runs = []  # (class, symbols) in decode order
    for d in range(a + b - 1):
        rows, cols = _diagonal(a, b, d)
        order, present, counts = sorted_runs(_classes(q, rows, cols, expect))
        sym = q[:, :, rows, cols].ravel()[order]
        start = 0
        for k, cnt in zip(present.tolist(), counts.tolist(), strict=True):
            runs.append((k, sym[start : start + cnt]))
            start += cnt
    by: dict[int, list[np.ndarray]] = {}
    for k, sym in runs:
        by.setdefault(k, []).append(sym)
    present = sorted(by)
    params = {k: _params(np.concatenate(by[k]), bits) for k in present}
    models = {k: _model(params[k], bits) for k in present if params[k][0] > 0}
    coder = constriction.stream.stack.AnsCoder()
    for k, sym in reversed(runs):
        if k in models:
            coder.encode_reverse((sym + params[k][0]).astype(np.int32), models[k])
    for k in reversed(present):
        top, z, theta = params[k]
        if top:
            coder.encode_reverse(np.array([z, theta], dtype=np.int32), param_model)
        coder.encode_reverse(np.array([top], dtype=np.int32), top_model)
    _push_present(coder, present, n_classes(c, layout), layout)
    return coder.get_compressed()


def _expect(expect, shape, layout: int) -> np.ndarray | None:
    """Format 6's expectation buckets (zeros when not given); None for format 5."""
    if layout not in LAYOUTS:
        raise ValueError(f"no transform layout {layout}")
    if layout < 6:
        return None
    if expect is None:
        return np.zeros(shape, dtype=np.int64)
    expect = np.asarray(expect, dtype=np.int64)
    if expect.shape != shape or expect.min(initial=0) < 0 or expect.max(initial=0) >= N_EXPECT:
        raise ValueError(f"expectation buckets of shape {expect.shape} for blocks {shape}")
    return expect


def _push_present(coder, present: list[int], total: int, layout: int) -> None:
    """The classes present: format 5 their count and indices; format 6 a bit and then
    that list or a mask of ``total`` bits, whichever is shorter."""
    as_list = layout < 6 or (math.log2(total + 1) + len(present) * math.log2(total) <= total)
    if not as_list:
        mask = np.zeros(total, dtype=np.int32)
        mask[present] = 1
        coder.encode_reverse(mask, _BIT)
    else:
        if present:
            coder.encode_reverse(np.array(present, dtype=np.int32),
                                 constriction.stream.model.Uniform(total))  # fmt: skip
        coder.encode_reverse(np.array([len(present)], dtype=np.int32),
                             constriction.stream.model.Uniform(total + 1))  # fmt: skip
    if layout >= 6:
        coder.encode_reverse(np.array([0 if as_list else 1], dtype=np.int32), _BIT)


def decode_block(
    words: np.ndarray, base: np.ndarray, step: int, expect: np.ndarray | None = None,
    layout: int = 6,
) -> np.ndarray:  # fmt: skip
    """ANS words and the base images (n, C, H, W) uint8 -> the decoded images (uint8);
    ``expect`` and ``layout`` as the encoder had them. DiscretaeError unless the words
    hold exactly this block's residual."""
    step = check_step(step)
    n, c, h, w = base.shape
    shape = (n, c, -(-h // SIDE), -(-w // SIDE))
    expect = _expect(expect, (n, *shape[2:]), layout)
    q = decode_exactly(words, lambda coder: _pop(coder, shape, step, expect, layout), "residual")
    return reconstruct(q, base, step)


def _pop(coder, shape, step: int, expect, layout: int) -> np.ndarray:
    """The symbols q (n, C, A, B, 16) that :func:`encode_block` pushed."""
    n, c, a, b = shape
    tops, models = _pop_params(coder, n_classes(c, layout), step, layout)
    q = np.zeros((n, c, a, b, N_FREQ), dtype=np.int32)
    used = set()
    for d in range(a + b - 1):
        rows, cols = _diagonal(a, b, d)
        cls = _classes(q, rows, cols, expect)
        order, here, counts = sorted_runs(cls)
        sym = np.zeros(order.size, dtype=np.int32)
        start = 0
        for k, cnt in zip(here.tolist(), counts.tolist(), strict=True):
            if k not in tops:
                raise DiscretaeError("corrupt archive: the residual's classes do not fit")
            if k in models:
                sym[order[start : start + cnt]] = coder.decode(models[k], cnt) - tops[k]
            used.add(k)
            start += cnt
        q[:, :, rows, cols] = sym.reshape(cls.shape)
    if len(used) != len(tops):
        raise DiscretaeError("corrupt archive: the residual names classes it does not use")
    return q


def _pop_present(coder, total: int, layout: int) -> list[int]:
    if layout >= 6 and int(coder.decode(_BIT, 1)[0]):
        return np.flatnonzero(coder.decode(_BIT, total)).tolist()
    n_present = int(coder.decode(constriction.stream.model.Uniform(total + 1), 1)[0])
    present = coder.decode(constriction.stream.model.Uniform(total), n_present).tolist()
    if any(y <= x for x, y in zip(present, present[1:], strict=False)):
        raise DiscretaeError("corrupt archive: the residual's classes are out of order")
    return present


def _pop_params(coder, total: int, step: int, layout: int) -> tuple[dict, dict]:
    """The classes present, each with its top and (when top > 0) its law."""
    present = _pop_present(coder, total, layout)
    bits, param_model, top_model = _param_coding(layout, step)
    tops, models = {}, {}
    for k in present:
        tops[k] = int(coder.decode(top_model, 1)[0])
        if tops[k] > top_bound(step):
            raise DiscretaeError("corrupt archive: a residual class's range is too wide")
        if tops[k]:
            z, theta = (int(v) for v in coder.decode(param_model, 2))
            models[k] = _model((tops[k], z, theta), bits)
    return tops, models
