"""``discretae compress``: DATA -> one ``.dae`` archive of entropy-coded codes."""

from __future__ import annotations

import os

import numpy as np
import torch

from discretae.commands.common import (
    Callback,
    Warn,
    load_codec,
    load_model_data,
    model_batches,
    refuse_color_for_gray_model,
)
from discretae.core.devices import check_device
from discretae.core.errors import DiscretaeError
from discretae.core.files import atomic_path, check_output
from discretae.core.images import to_uint8

# compress --psnr: images the candidates are measured on (a seeded draw across DATA)
PSNR_SAMPLE = 256
MAX_ERROR_TOP = 127  # the largest max error a refinement takes
STEP_TOP = 255  # the largest step a transform residual takes
# --psnr without --rate-weight measures these weights too (vq and rvq with a prior) and
# keeps the cheapest: on openclipart a weight of 0.1 under a transform residual saved 0-2%
# (1 level), 4-6% (2) and 6-11% (3) at equal PSNR from 31 to 37.5 dB (README, Compress)
PSNR_RATE_WEIGHTS = (0.0, 0.1)
# compress --psnr encodes DATA and scores it; short of the target, the sample is aimed
# higher by the gap between the two plus PSNR_AIM_STEP dB and DATA encoded again,
# PSNR_ROUNDS passes at most. On openclipart's 998 test images the 256-image sample had
# reached the target where the whole scored 0.3-0.45 dB under it, on 5 of 6 targets from
# 25 to 35 dB.
PSNR_ROUNDS = 3
PSNR_AIM_STEP = 0.05


def compress(
    data: str,
    *,
    model: str | os.PathLike,
    out: str | os.PathLike,
    levels: int | None = None,
    max_error: int | None = None,
    step: int | None = None,
    rate_weight: float | None = None,
    psnr: float | None = None,
    names: bool = True,
    batch_size: int = 256,
    device: str = "auto",
    strict: bool = False,
    callback: Callback = None,
    warn: Warn = None,
) -> dict:
    """Encode DATA with a model and write one ``.dae`` archive of entropy-coded codes.

    DATA is fitted to the model as ``encode`` fits it (resized; gray images repeated into
    RGB for an RGB model; color refused for a gray one). ``levels`` keeps the first levels
    of a residual (rvq) model: fewer bytes, a coarser image. ``max_error`` adds a
    refinement: no pixel value of the decoded images is off by more than it from the
    images as the model reads them (0: lossless), more bytes the smaller it is. ``step``
    instead adds a transform residual with that quantizer step
    (:mod:`discretae.compression.transform`): no bound, fewer bytes for a PSNR.
    ``rate_weight`` > 0 stores codes a little further from the images that the prior finds
    cheaper (vq and rvq; :mod:`discretae.compression.rate`; None: 0, or :func:`_for_psnr`'s).
    ``psnr`` instead of ``levels``, ``max_error`` and ``step``: the setting with the fewest
    bytes whose images reach that mean PSNR (dB) on a sample of DATA, checked over all of
    DATA and aimed higher where DATA falls short (:func:`_reach_psnr`). ``names``
    stores the images' file names when DATA has them (folders). Returns the archive's
    size, bytes and bits per image (header amortised), and more.
    """
    _check_options(out, device, levels, max_error, step, rate_weight, psnr)
    codec = load_codec(model, device, rate_weight=rate_weight or 0.0)
    levels = codec.check_levels(levels)
    if codec.uniform and warn is not None:
        warn(
            f"model {str(model)!r} has no code prior: codes are stored at log2({codec.n_codes}) "
            "bits each; fit_prior/save_prior add one"
        )
    ds = load_model_data(data, codec.est, strict=strict, warn=warn)
    chosen = None
    if psnr is not None:
        codec, chosen, sym, refine_words = _reach_psnr(
            codec, rate_weight, ds, psnr, batch_size, callback, warn
        )
        levels, max_error, step = chosen["levels"], chosen["max_error"], chosen["step"]
    transform, bound = _refinement(max_error, step)
    if psnr is None:
        sym, refine_words, _ = _symbols(codec, ds, batch_size, callback, levels, bound, transform)
    if sym is None:
        raise DiscretaeError(f"no readable images in {data!r}")
    stored = _names(ds, names, warn)
    refine = None if bound is None else (bound, refine_words)
    codes = codec.to_codes_prefix(sym[..., :levels])
    archive = codec.encode_codes(codes, names=stored, levels=levels, refine=refine,
                                 transform=transform)  # fmt: skip
    with atomic_path(out) as tmp:
        tmp.write_bytes(archive)
    setting = {"levels": levels, "max_error": max_error, "step": step}
    return _result(codec, ds, out, archive, len(sym), setting, stored is not None, chosen)


def _result(codec, ds, out, archive: bytes, n: int, setting: dict, names: bool, chosen):
    """What :func:`compress` returns for an archive of ``n`` images written to ``out``."""
    from discretae.compression.archive import parse_archive

    payload = 4 * sum(len(b) for b in parse_archive(archive)[2])
    return {
        "out": str(out),
        "n_images": n,
        "skipped": len(getattr(ds, "skipped", []) or []),
        "archive_bytes": len(archive),
        "bytes_per_image": len(archive) / n,
        "bits_per_image": 8 * len(archive) / n,
        "header_bytes": len(archive) - payload,
        **setting,
        "max_levels": codec.n_levels,
        "rate_weight": codec.rate_weight,
        "code_shape": [*codec.grid, setting["levels"]],
        "n_codes": codec.n_codes,
        "prior": "uniform" if codec.uniform else codec.prior.kind,
        "names": names,
        "model_hash": codec.digest.hex(),
        **({"psnr_target": chosen} if chosen is not None else {}),
    }


def _reach_psnr(codec, rate_weight, ds, target, batch_size, callback, warn):
    """-> (codec, setting, symbols, refinement words): the setting :func:`_for_psnr` picks
    on the sample, then DATA encoded with it and its decoded images scored. Where DATA's
    mean PSNR falls short of ``target`` (the sample was easier than the whole), the sample
    is aimed at the target plus the gap between the sample's PSNR and DATA's (and
    ``PSNR_AIM_STEP`` dB more) and DATA encoded again, at most ``PSNR_ROUNDS`` passes in
    all, the later searches with the first's rate weight.
    The setting adds "data_psnr" (DATA's mean PSNR), "sample_target_db" and "passes"."""
    aim, weight = target, rate_weight
    for n_pass in range(1, PSNR_ROUNDS + 1):
        codec, chosen = _for_psnr(codec, weight, ds, aim, batch_size, callback)
        transform, bound = _refinement(chosen["max_error"], chosen["step"])
        sym, words, score = _symbols(
            codec, ds, batch_size, callback, chosen["levels"], bound, transform, measure=True
        )
        chosen = {**chosen, "target_db": target, "sample_target_db": aim,
                  "data_psnr": score, "passes": n_pass}  # fmt: skip
        if sym is None or score >= target or _finest(chosen):
            break
        # the sample scored sample_psnr where DATA scored less: aim it higher by that
        # gap, above what it reached, so that a finer setting is chosen
        aim = target + (chosen["sample_psnr"] - score) + PSNR_AIM_STEP
        weight = codec.rate_weight
    if sym is not None and chosen["data_psnr"] < target and warn is not None:
        warn(
            f"--psnr {target:g}: DATA's images decode at {chosen['data_psnr']:.2f} dB "
            f"(the sample at {chosen['sample_psnr']:.2f} dB) after {chosen['passes']} passes"
        )
    return codec, chosen, sym, words


def _refinement(max_error: int | None, step: int | None) -> tuple[bool, int | None]:
    """-> (transform, bound): a transform residual's step, else the max error (None: no
    refinement)."""
    return step is not None, max_error if step is None else step


def _finest(chosen: dict) -> bool:
    """Whether a setting cannot be made finer: lossless (a max error of 0)."""
    return chosen["max_error"] == 0


def _for_psnr(codec, rate_weight, ds, target, batch_size, callback):
    """-> (codec, setting): :func:`choose_for_psnr` for the rate weight given, or with
    None for each of ``PSNR_RATE_WEIGHTS`` the model takes (a weight its codec refuses,
    as a gumbel model or one without a prior does, is left out), the one of fewest bytes;
    its "tried" lists every weight's settings, each with its "rate_weight"."""
    weights = PSNR_RATE_WEIGHTS if rate_weight is None else (rate_weight,)
    codecs = [codec]
    for w in weights:
        if w != codec.rate_weight:
            try:
                codecs.append(codec.weighted(w))
            except DiscretaeError:
                continue
    best, tried = None, []
    for c in codecs:

        def told(event: dict, done=len(tried)) -> None:  # one count over every weight
            callback({**event, "done": done + event["done"], "total": event["total"] * len(codecs)})

        got = choose_for_psnr(c, ds, target, batch_size, None if callback is None else told)
        tried += [{**t, "rate_weight": c.rate_weight} for t in got["tried"]]
        if best is None or got["sample_bytes_per_image"] < best[1]["sample_bytes_per_image"]:
            best = (c, got)
    codec, chosen = best
    return codec, {**chosen, "rate_weight": codec.rate_weight, "tried": tried}


def _names(ds, names: bool, warn: Warn) -> list[str] | None:
    """The file names to store (after the pass: files that failed are gone), or None."""
    stored = ds.names if names else None
    if stored is not None and any("\n" in s for s in stored):
        stored = None
        if warn is not None:
            warn("a file name holds a line break: names are not stored")
    return stored


def _check_options(out, device, levels, max_error, step, rate_weight, psnr) -> None:
    """Refuse bad options before any work, with one line each."""
    from discretae.compression.rate import check_rate_weight
    from discretae.compression.refine import check_max_error
    from discretae.compression.transform import check_step

    check_output(out)
    check_device(device)
    if max_error is not None:
        check_max_error(max_error)
    if step is not None:
        check_step(step)
    if max_error is not None and step is not None:
        raise DiscretaeError("give a max error or a step, not both: one refinement an archive")
    if rate_weight is not None:
        check_rate_weight(rate_weight)
    if psnr is not None and (levels is not None or max_error is not None or step is not None):
        raise DiscretaeError("give a PSNR target or levels / a max error / a step, not both")
    if psnr is not None and not 0 < psnr <= 100:
        raise DiscretaeError(f"psnr={psnr}: give a target in dB, above 0 and at most 100")


def choose_for_psnr(
    codec, ds, target: float, batch_size: int = 256, callback: Callback = None
) -> dict:
    """The setting with the fewest bytes per image whose decoded images reach a mean PSNR
    of ``target`` dB, measured on ``PSNR_SAMPLE`` images drawn across ``ds``: per level
    prefix the codes' real archive size and their decoded images, and for a refinement
    its real words, decoded again. Per level: the codes alone, or else the cheaper of two
    refinements that reach the target: the largest max error (a smaller one only adds
    bytes), found by bisection over 0..127 (the PSNR falls as the max error grows; 0,
    lossless, always reaches it), and the largest transform step, by bisection over
    1..255 (left out when step 1 falls short). -> {"target_db", "levels", "max_error"
    and "step" (None: not that refinement; both None: codes only), "sample_images",
    "sample_psnr", "sample_bytes_per_image", "tried"}. ``callback`` is told {"stage",
    "done", "total", "unit": "settings"} after each setting measured (``total``: at most
    18 a level: the codes, 1 + 7 bisection steps + lossless, 1 + 8 steps)."""
    from discretae.evaluation.metrics import psnr_per_image

    x, sym = _psnr_sample(codec, ds, batch_size)
    n = len(x)
    levels = range(1, codec.n_levels + 1) if codec.residual else [codec.n_levels]
    tried: list[dict] = []
    best = None
    for lv in levels:
        s = sym[..., :lv]
        base = codec.base_images(s)
        codes_bytes = len(codec.encode_codes(codec.to_codes_prefix(s), levels=lv))

        def measure(e: int | None, transform=False, lv=lv, s=s, base=base, size=codes_bytes):
            if e is None:  # what a codes-only archive decodes to (bfloat16 where fast)
                got = codec.decode_images(s)
            else:
                words = codec.refine_block(x, s, e, transform, base)
                got = codec.refined_images(words, base, s, e, transform)
                size += 4 * len(words)
            psnr = float(psnr_per_image(got, x).mean())
            tried.append({"levels": lv, "max_error": None if transform else e,
                          "step": e if transform else None, "psnr": psnr,
                          "bytes_per_image": size / n})  # fmt: skip
            if callback is not None:
                callback({"stage": "choosing the setting", "done": len(tried),
                          "total": 18 * len(levels), "unit": "settings"})  # fmt: skip
            return tried[-1]

        row = measure(None)
        if row["psnr"] < target:
            rows = [_largest(lambda e: measure(e), 0, MAX_ERROR_TOP, target)]
            finest = measure(1, True)
            if finest["psnr"] >= target:
                rows.append(_largest(lambda e: measure(e, True), 1, STEP_TOP, target, finest))
            row = min(rows, key=lambda r: r["bytes_per_image"])
        if best is None or row["bytes_per_image"] < best["bytes_per_image"]:
            best = row
        if row["max_error"] is None and row["step"] is None:
            break  # the codes alone reach it: more levels only cost more
    return {
        "target_db": target,
        "levels": best["levels"],
        "max_error": best["max_error"],
        "step": best["step"],
        "sample_images": n,
        "sample_psnr": best["psnr"],
        "sample_bytes_per_image": best["bytes_per_image"],
        "tried": tried,
    }


def _largest(measure, lo: int, hi: int, target: float, row: dict | None = None) -> dict:
    """The measured row of the largest value in lo..hi whose PSNR reaches ``target``, by
    bisection; ``lo`` reaches it (``row``, when given, is lo's)."""
    while lo < hi:
        mid = (lo + hi + 1) // 2
        got = measure(mid)
        lo, hi, row = (mid, hi, got) if got["psnr"] >= target else (lo, mid - 1, row)
    return row or measure(lo)


def _psnr_sample(codec, ds, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``PSNR_SAMPLE`` images drawn across ``ds`` (a seeded shuffle, so a folder's first
    category does not stand for all; every image when there are fewer) as the model
    reads them (uint8), and their symbols."""
    xs, syms, n = [], [], 0
    with torch.inference_mode(), refuse_color_for_gray_model():
        for images, _ in ds.batches(min(batch_size, PSNR_SAMPLE), shuffle=True, seed=0):
            images = images[: PSNR_SAMPLE - n]
            xs.append(to_uint8(images.numpy()))
            syms.append(codec.encode_images(images))
            n += len(images)
            if n >= PSNR_SAMPLE:
                break
    if not n:
        raise DiscretaeError("no readable images to measure the PSNR target on")
    return np.concatenate(xs), np.concatenate(syms)


def _symbols(
    codec,
    ds,
    batch_size: int,
    callback,
    levels: int,
    max_error: int | None,
    transform: bool,
    measure: bool = False,
):
    """Stream DATA through the codec: (symbols (N, h, w, T) int64 or None when no image
    was readable, the refinement's words per archive block when ``max_error`` is set: a
    maximum error, or with ``transform`` a step, and with ``measure`` the mean PSNR of the
    images the archive decodes to, else None). Images wait for the refinement a block at
    a time."""
    from discretae.compression.codec import BLOCK
    from discretae.evaluation.metrics import psnr_per_image

    parts, words, pending, pending_sym, scores = [], [], [], [], []

    def flush(final: bool) -> None:
        while pending and (final or sum(len(p) for p in pending) >= BLOCK):
            x, sym = np.concatenate(pending), np.concatenate(pending_sym)
            sym_block = sym[:BLOCK, ..., :levels]
            base = codec.base_images(sym_block)
            words.append(codec.refine_block(x[:BLOCK], sym_block, max_error, transform, base))
            if measure:
                got = codec.refined_images(words[-1], base, sym_block, max_error, transform)
                scores.append(psnr_per_image(got, x[:BLOCK]))
            pending[:] = [x[BLOCK:]] if len(x) > BLOCK else []
            pending_sym[:] = [sym[BLOCK:]] if len(x) > BLOCK else []

    for images, _ in model_batches(ds, batch_size, stage="encode", callback=callback):
        sym = codec.encode_images(images)
        parts.append(sym)
        if max_error is not None:
            pending.append(to_uint8(images.numpy()))
            pending_sym.append(sym)
            flush(final=False)
        elif measure:
            got = codec.decode_images(sym[..., :levels])
            scores.append(psnr_per_image(got, to_uint8(images.numpy())))
    if max_error is not None:
        flush(final=True)
    score = float(np.concatenate(scores).mean()) if scores else None
    return (np.concatenate(parts) if parts else None), words, score
