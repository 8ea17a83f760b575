"""Rate-distortion of discretae's code archives next to PNG, JPEG, WebP and AVIF (Pillow).

    python benchmarks/rate_distortion.py                        # fashion-mnist and digits
    python benchmarks/rate_distortion.py --data digits --reuse  # reuse cached fits
    python benchmarks/rate_distortion.py --data openclipart --threads 2      # colour clip art
    python benchmarks/rate_distortion.py --data openclipart --epochs 5 --n-train 3000

Datasets, train split / test split:

- ``fashion-mnist`` (28x28 gray): the 60k train images (``--n-train``) / the first
  ``--n-test`` test images;
- ``digits`` (8x8 gray): the first 1400 of 1797 / the other 397;
- ``openclipart`` (64x64 RGB): Debian's ``openclipart-png`` (``apt-get install
  openclipart-png``; PNG clip art in category folders, RGBA, LA and palette, 32 to 1,900 px
  wide, ``--openclipart``), read by ``discretae.data.load_dataset`` as a model of that
  size reads it: transparency composited over white, the aspect kept by padding with
  white. Symlinked copies of a file count once. A file is a test file when the SHA-256 of
  its base name (symlinks resolved) is below 15 mod 100 (:func:`openclipart_split`): about
  85/15, the same on every machine, and same-named files (one icon in two themes) stay on
  one side. Both splits are taken in hash order, the train split capped by ``--n-train``
  and the test split by ``--n-test``. The decoded array is cached under ``--cache``.
  Our models take RGB and give RGB; PSNR is over all three channels ("psnr-rgb").

Every operating point is one model, or one level prefix of a residual (rvq) model, with
its code prior fitted on the same train split. For each point:

- bytes per image: the size of the real ``.dae`` file written for the whole test split,
  divided by the image count (the header amortised); bits per pixel (bpp) are
  8 * bytes per image / (H * W);
- PSNR: the mean over images of 10 log10(255^2 / MSE), the MSE over all pixels and
  channels of the decoded uint8 image (the usual per-image average;
  ``psnr_of_mean_mse`` is also given). Identical images (MSE 0) count as 100 dB;
- MS-SSIM: 5 scales, 11-px Gaussian window (sigma 1.5), the weights of Wang et al. 2003
  (:func:`ms_ssim`), mean over images, only when the smaller image side is at least
  161 px (five scales of an 11-px window). None of these datasets is (8, 28 and 64 px),
  so their values are null with a note saying why.

PNG, JPEG, WebP and AVIF encode the same uint8 images one file per image in the same run;
their bytes per image are the mean file size. AVIF is measured when this Pillow writes it
(``PIL.features.check("avif")`` and a trial encode and decode); otherwise the JSON says
``"avif": {"skipped": "<reason>"}`` and the table and plot leave it out. An AVIF file
carries about 300 bytes of HEIF container, which dominates at these image sizes.

The issue's targets are checked as it words them: at every point of ours from 25 to 40
dB on Fashion-MNIST (25 to 35 dB on openclipart, colour), fewer bytes than WebP at the
same PSNR, interpolated linearly on WebP's measured curve; a point within 0.5 dB of
27.8 dB at no more than 0.40x WebP's bytes at its PSNR; a point above 36 dB. On digits
they are a comparison. Points of ours: every level prefix of the codes alone, and the
same prefixes refined with ``compress --max-error E`` for each E in ``--max-errors``
(the worst pixel error of every refined point is checked against E; each also gives
``by_class_bytes_per_image``, the same archive with its refinement coded by class alone,
format 3's layout, :func:`refined_by_class`), and the prefixes
encoded with ``compress --rate-weight w`` for each w in ``--rate-weights``, and every
prefix, with and without each rate weight, refined with ``compress --step S`` for each S
in ``--steps`` (each also gives ``dead_zone_bytes_per_image`` and ``dead_zone_psnr``,
the same archive with its residual quantized by the dead zone alone,
:func:`dead_zone_archive`). The older aim
(27.8 dB at 80 bytes) is still reported. Encode and decode times
are wall times over the whole test split (``--threads`` CPU threads; ours in batches of
``BATCH`` images through the network, the archive written and read back; Pillow one file
per image), per operating point.

Fitted networks are cached under ``--cache`` (default: a folder in the system temp dir)
keyed by their settings; ``--reuse`` takes a cached network instead of fitting again.
``--epochs`` overrides every model's epochs (a different cache key). The code prior is
fitted in every run, of the kind ``--prior`` names (as ``discretae fit --prior``; default
auto, which records both priors' held-out bits in the model entry): the context tables
take seconds, the learned prior about 7 minutes on one thread for Fashion-MNIST's 60k.

Cost on the 2-core machine at one thread: digits about a minute; Fashion-MNIST over an
hour (each rvq fit about 20 minutes on 2 cores; ``--models`` picks one); openclipart: a
step of 32 images of its rvq model took 0.72 s while both cores were shared with other
jobs, and its ~6,900 train images make 216 steps per epoch, so the default 15 epochs
cost roughly 40 minutes, ``--epochs 5`` about 13, and ``--n-train 3000`` about half
that again; reading the 8,121 PNGs the first time adds
a minute or two (a 300-file sample took 1.5 s; cached afterwards).

Writes, under ``--out`` (default ``benchmarks/results``):
``rate_distortion[-DATA]-cpu-DATE.json``, one plot per dataset
(``rate_distortion-<dataset>-cpu-DATE.png``: bytes per image and bpp against PSNR) and,
per dataset and lossy codec, ``rd-<dataset>-<codec>.json`` (codec: discretae, webp, jpeg,
avif) in the layout of CompressAI's evaluation scripts: ``{"name", "description",
"results": {"bpp", "psnr-rgb" or "psnr", "ms-ssim", "encoding_time", "decoding_time"}}``,
lists aligned by operating point (ours: the points of all our models not beaten on both
bytes and PSNR), times in seconds per image. PNG is lossless (no finite PSNR) and has no
such file; its size is in the main JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL
import torch
import torch.nn.functional as F
from _common import cpu_header  # sibling: scripts run as benchmarks/X.py
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from discretae.commands.common import load_codec
from discretae.commands.compress import compress
from discretae.compression import transform as transform_residual
from discretae.compression.archive import pack_archive, parse_archive
from discretae.compression.codec import load_prior, save_prior
from discretae.compression.fitting import PRIOR_KINDS, fit_prior, fit_refinement
from discretae.core.files import atomic_path, write_text_atomic
from discretae.data import load_dataset
from discretae.data.framing import Framing
from discretae.estimator.discrete_autoencoder import DiscreteAutoencoder
from discretae.evaluation.metrics import PSNR_CAP, psnr_per_image

RESULTS = Path(__file__).parent / "results"
OPENCLIPART = Path("/usr/share/openclipart/png")  # Debian's openclipart-png
OPENCLIPART_SIZE = (64, 64)
TEST_PERCENT = 15  # openclipart files in the test split, percent
JPEG_QUALITIES = (5, 10, 20, 30, 50, 70, 90)
WEBP_QUALITIES = (0, 5, 10, 15, 20, 30, 40, 50, 60, 70, 80, 90)
AVIF_QUALITIES = (0, 5, 10, 15, 20, 30, 40, 50, 60, 70, 80, 90)
MAX_ERRORS = (1, 2, 3, 4, 6, 8, 12, 16)  # refinement points (compress --max-error)
STEPS = ()  # transform refinement points (compress --step): none unless asked
RATE_WEIGHTS = (0.02, 0.05, 0.1)  # rate-weighted points (compress --rate-weight)
TARGET_RANGE = (25.0, 35.0)
# the issue's ranges: Fashion-MNIST from 25 to 40 dB, colour from 25 to 35
TARGET_RANGES = {"fashion-mnist": (25.0, 40.0), "openclipart": (25.0, 35.0)}
NEAR_AIM = {"psnr": 27.8, "within_db": 0.5, "webp_ratio": 0.40}  # the issue's 27.8 dB point
HIGH_PSNR = 36.0  # the issue asks for at least one point above it
TARGET_DATASETS = ("fashion-mnist", "openclipart")  # where the required target is the issue's
AIM = {"psnr": 27.8, "bytes_per_image": 80.0}
# measured earlier on 2000 Fashion-MNIST test images (the issue's reference table)
REFERENCE = {"webp_q10": [163, 27.8], "webp_q30": [201, 31.4], "webp_q50": [235, 34.2]}
BATCH = 512  # images per network call when measuring ours
COMMON = dict(latent="grid", batch_size=32, lr=1e-3, loss="mse", device="cpu", random_state=0)
# MS-SSIM (Wang, Simoncelli and Bovik 2003): per-scale weights, window, constants
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
MS_SSIM_WINDOW, MS_SSIM_SIGMA, MS_SSIM_K = 11, 1.5, (0.01, 0.03)
# the smallest side that still holds the window at the coarsest of 5 scales (halved 4 times)
MS_SSIM_MIN_SIDE = (MS_SSIM_WINDOW - 1) * 2 ** (len(MS_SSIM_WEIGHTS) - 1) + 1  # 161

# name -> estimator parameters; an rvq model gives one point per level prefix
MODELS = {
    "fashion-mnist": {
        "rvq-7x7-k256-l4": dict(
            model="rvq", n_codes=256, grid=(7, 7), epochs=12, quantizer_options={"levels": 4}
        ),
        # the same without the full-resolution decoder stage: twice the decoding speed
        "rvq-7x7-k256-l4-light": dict(
            model="rvq",
            n_codes=256,
            grid=(7, 7),
            epochs=12,
            quantizer_options={"levels": 4},
            decoder="light",
        ),
        "vq-7x7-k512": dict(model="vq", n_codes=512, grid=(7, 7), epochs=4),
        "binary-7x7-b12": dict(model="binary", n_bits=12, grid=(7, 7), epochs=4),
    },
    "digits": {
        "rvq-4x4-k64-l4": dict(
            model="rvq", n_codes=64, grid=(4, 4), epochs=40, quantizer_options={"levels": 4}
        ),
        "vq-4x4-k256": dict(model="vq", n_codes=256, grid=(4, 4), epochs=40),
    },
    "openclipart": {
        # 64x64 -> the network's own 8x8 grid; six levels reach 8x8x6 bytes before coding
        "rvq-8x8-k256-l6": dict(
            model="rvq", n_codes=256, grid=(8, 8), epochs=15, quantizer_options={"levels": 6}
        ),
        # a 16x16 grid: one stride-2 stage fewer (its own features, not the 8x8 map's),
        # 45 s an epoch on 2 cores against 99 for the 8x8 grid
        "rvq-16x16-k256-l3": dict(
            model="rvq", n_codes=256, grid=(16, 16), epochs=15, quantizer_options={"levels": 3}
        ),
        # a 32x32 grid (one stride-2 stage): finer still, and worse: 1 level 567.0 B at
        # 30.89 dB (WebP 316.6), context tables (rate_distortion-openclipart-32x32-*)
        "rvq-32x32-k256-l2": dict(
            model="rvq", n_codes=256, grid=(32, 32), epochs=15, quantizer_options={"levels": 2}
        ),
        # fit's default for 64x64 (16x16 grid, 4 levels), trained twice as long
        "rvq-16x16-k256-l4": dict(
            model="rvq", n_codes=256, grid=(16, 16), epochs=30, quantizer_options={"levels": 4}
        ),
    },
}


# ----------------------------------------------------------------------- data
def to_u8(x: np.ndarray) -> np.ndarray:
    return np.rint(np.asarray(x) * 255).clip(0, 255).astype(np.uint8)


def _hash_value(key: str) -> int:
    return int.from_bytes(
        hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()[:8], "big"
    )


def openclipart_split(
    keys: list[str], test_percent: int = TEST_PERCENT
) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices into ``keys``: key k is a test key when the SHA-256 of k, its
    first 8 bytes as an integer, is below ``test_percent`` mod 100. Each split is in the
    order of that integer (then index), so a cap on it takes a sample across categories
    rather than the first folders; equal keys land on the same side."""
    values = [_hash_value(k) for k in keys]
    order = sorted(range(len(keys)), key=lambda i: (values[i], i))
    test = [i for i in order if values[i] % 100 < test_percent]
    train = [i for i in order if values[i] % 100 >= test_percent]
    return np.array(train, dtype=np.int64), np.array(test, dtype=np.int64)


def load_openclipart(
    folder: Path, size: tuple[int, int] = OPENCLIPART_SIZE, cache: Path | None = None
) -> dict:
    """Every image under ``folder`` as a model of ``size`` (H, W) RGB reads it (white
    under transparency, padded to keep the aspect), one per real file (symlinked copies
    dropped, the first sorted name kept). -> {"names", "keys" (split keys: the resolved
    file's base name), "x" uint8 (N, 3, H, W), "warnings"}; cached in ``cache`` by the
    folder's listing and ``size``."""
    from discretae.data.readers import list_image_files

    if not folder.is_dir():
        raise SystemExit(f"{folder} is not a folder (apt-get install openclipart-png)")
    listing, _ = list_image_files(folder)
    digest = hashlib.sha256("\n".join([f"{size}", *listing]).encode("utf-8", "surrogateescape"))
    cached = None
    if cache is not None:
        cached = cache / f"openclipart-{size[0]}x{size[1]}-{digest.hexdigest()[:12]}.npz"
        if cached.is_file():
            with np.load(cached) as z:
                return {"names": z["names"].tolist(), "keys": z["keys"].tolist(),
                        "x": z["x"], "warnings": z["warnings"].tolist()}  # fmt: skip
    notes: list[str] = []
    ds = load_dataset(str(folder), image_size=size, channels=3, warn=notes.append,
                      framing=Framing(resize="pad", background=(255, 255, 255)))  # fmt: skip
    x = to_u8(ds.to_array())
    names = list(ds.names)  # after a full pass, aligned with the rows (bad files removed)
    real = [os.path.realpath(folder / n) for n in names]
    first = {}
    for i, r in enumerate(real):
        first.setdefault(r, i)
    keep = sorted(first.values())
    out = {"names": [names[i] for i in keep], "keys": [os.path.basename(real[i]) for i in keep],
           "x": x[keep], "warnings": [str(n) for n in notes]}  # fmt: skip
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cached) as tmp, open(tmp, "wb") as f:
            np.savez(f, **{k: np.asarray(v) for k, v in out.items()})
    return out


def load_split(name: str, args, cache: Path | None) -> tuple[np.ndarray, np.ndarray, dict]:
    """(train, test) uint8 (N, C, H, W) and notes on how they were made."""
    if name == "digits":
        x = to_u8(load_dataset("digits").to_array())
        return x[:1400], x[1400:], {}
    if name == "openclipart":
        data = load_openclipart(args.openclipart, OPENCLIPART_SIZE, cache)
        train, test = openclipart_split(data["keys"], TEST_PERCENT)
        train, test = train[: args.n_train], test[: args.n_test]
        notes = {
            "folder": str(args.openclipart), "files": len(data["names"]),
            "image_size": list(OPENCLIPART_SIZE), "framing": "pad, white background",
            "split": f"test when sha256(base name) < {TEST_PERCENT} mod 100, hash order",
            "test_names": [data["names"][i] for i in test], "load_warnings": data["warnings"],
        }  # fmt: skip
        return data["x"][train], data["x"][test], notes
    train = to_u8(load_dataset("fashion-mnist:train").to_array())
    test = to_u8(load_dataset("fashion-mnist:test").to_array())
    return train[: args.n_train], test[: args.n_test], {}


# ----------------------------------------------------------------------- metrics
def ms_ssim_applies(shape) -> bool:
    """Whether images of shape (..., H, W) are large enough for 5-scale MS-SSIM."""
    return min(shape[-2:]) >= MS_SSIM_MIN_SIDE


def ms_ssim_note(shape) -> str | None:
    """Why MS-SSIM is null for images of shape (..., H, W); None when it is computed."""
    if ms_ssim_applies(shape):
        return None
    h, w = shape[-2:]
    need = f"{MS_SSIM_MIN_SIDE} px ({len(MS_SSIM_WEIGHTS)} scales, {MS_SSIM_WINDOW}-px window)"
    return f"MS-SSIM needs a smaller side of at least {need}; these images are {h}x{w}"


def _gaussian() -> torch.Tensor:
    g = torch.arange(MS_SSIM_WINDOW, dtype=torch.float64) - (MS_SSIM_WINDOW - 1) / 2
    g = torch.exp(-(g * g) / (2 * MS_SSIM_SIGMA**2))
    return g / g.sum()


def _blur(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) -> (B, 1, H-10, W-10): the separable Gaussian over valid positions."""
    k = len(g)
    return F.conv2d(F.conv2d(x, g.view(1, 1, 1, k)), g.view(1, 1, k, 1))


def _halve(x: torch.Tensor) -> torch.Tensor:
    """2x2 mean, an odd last row or column repeated first (so 161 -> 81 -> ... -> 11)."""
    pad_w, pad_h = x.shape[-1] % 2, x.shape[-2] % 2
    if pad_w or pad_h:
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
    return F.avg_pool2d(x, 2)


def ms_ssim(a: np.ndarray, b: np.ndarray, chunk: int = 64) -> np.ndarray:
    """a, b (N, C, H, W) uint8 -> (N,) 5-scale MS-SSIM, each channel on its own, then the
    mean over channels. Scales 1-4 give the mean contrast-structure term, scale 5 the mean
    SSIM; each term is clipped at 0 before its weight's power (negative correlation
    counts as none). Needs min(H, W) >= MS_SSIM_MIN_SIDE."""
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"ms_ssim needs two (N, C, H, W) arrays of one shape; got {a.shape}, "
                         f"{b.shape}")  # fmt: skip
    if not ms_ssim_applies(a.shape):
        raise ValueError(ms_ssim_note(a.shape))
    n, c = a.shape[:2]
    c1, c2 = ((k * 255.0) ** 2 for k in MS_SSIM_K)
    g = _gaussian()
    weights = torch.tensor(MS_SSIM_WEIGHTS, dtype=torch.float64)[:, None]
    out = []
    for s in range(0, n, chunk):
        x = torch.from_numpy(a[s : s + chunk]).double().reshape(-1, 1, *a.shape[2:])
        y = torch.from_numpy(b[s : s + chunk]).double().reshape(-1, 1, *a.shape[2:])
        terms = []
        for scale in range(len(MS_SSIM_WEIGHTS)):
            mx, my = _blur(x, g), _blur(y, g)
            vx, vy = _blur(x * x, g) - mx * mx, _blur(y * y, g) - my * my
            cov = _blur(x * y, g) - mx * my
            cs = (2 * cov + c2) / (vx + vy + c2)
            if scale < len(MS_SSIM_WEIGHTS) - 1:
                terms.append(cs.mean((1, 2, 3)))
                x, y = _halve(x), _halve(y)
            else:
                lum = (2 * mx * my + c1) / (mx * mx + my * my + c1)
                terms.append((lum * cs).mean((1, 2, 3)))
        per_channel = (torch.stack(terms).clamp(min=0) ** weights).prod(0)
        out.append(per_channel.reshape(-1, c).mean(1))
    return torch.cat(out).numpy()


def quality(a: np.ndarray, b: np.ndarray) -> dict:
    """a, b (N, C, H, W) uint8: mean PSNR, PSNR of the mean MSE, mean MS-SSIM (None where
    the images are too small for it)."""
    d = a.astype(np.float64) - b
    return {
        "psnr": float(psnr_per_image(a, b).mean()),
        "psnr_of_mean_mse": float(10 * np.log10(255.0**2 / max((d * d).mean(), 1e-12))),
        "ms_ssim": float(ms_ssim(a, b).mean()) if ms_ssim_applies(a.shape) else None,
    }


# ----------------------------------------------------------------------- baselines
def pil_codec(images: np.ndarray, fmt: str, **opts) -> tuple[list[bytes], np.ndarray, dict]:
    """Encode (N, C, H, W) uint8 (C 1 or 3) one file per image; return files, decoded,
    timings (wall seconds for all images)."""
    mode = "L" if images.shape[1] == 1 else "RGB"
    pixels = images[:, 0] if mode == "L" else np.ascontiguousarray(images.transpose(0, 2, 3, 1))
    t = time.perf_counter()
    files = []
    for im in pixels:
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format=fmt, **opts)
        files.append(buf.getvalue())
    enc = time.perf_counter() - t
    t = time.perf_counter()
    out = np.stack([np.asarray(Image.open(io.BytesIO(f)).convert(mode)) for f in files])
    dec = time.perf_counter() - t
    out = out[:, None] if mode == "L" else out.transpose(0, 3, 1, 2)
    return files, out, {"encode_s": enc, "decode_s": dec}


def avif_support() -> str | None:
    """None when this Pillow writes and reads AVIF, else the reason it cannot."""
    from PIL import features

    try:
        if not features.check("avif"):
            return f"Pillow {PIL.__version__} was built without AVIF support"
        buf = io.BytesIO()
        Image.new("RGB", (16, 16), (200, 40, 40)).save(buf, format="AVIF", quality=50)
        Image.open(io.BytesIO(buf.getvalue())).convert("RGB").load()
    except Exception as e:  # any failure of the trial means AVIF is not usable here
        return f"a trial AVIF encode and decode failed: {e!r}"
    return None


def baselines(test: np.ndarray) -> dict:
    rows = {"png": [], "jpeg": [], "webp": []}
    files, out, t = pil_codec(test, "PNG")
    assert np.array_equal(out, test)
    rows["png"].append({"quality": None, "bytes_per_image": float(np.mean([len(f) for f in files])),
                        "psnr": None, "lossless": True, **t})  # fmt: skip
    codecs = [("jpeg", JPEG_QUALITIES), ("webp", WEBP_QUALITIES)]
    why = avif_support()
    if why is None:
        rows["avif"] = []
        codecs.append(("avif", AVIF_QUALITIES))
    else:
        rows["avif"] = {"skipped": why}
    for fmt, qualities in codecs:
        for q in qualities:
            files, out, t = pil_codec(test, fmt.upper(), quality=q)
            size = float(np.mean([len(f) for f in files]))
            rows[fmt].append({"quality": q, "bytes_per_image": size, **quality(out, test), **t})
    return rows


def lossy_curves(base: dict) -> dict[str, list[dict]]:
    """The measured lossy baselines (a skipped codec left out), fmt -> rows."""
    return {f: base[f] for f in ("webp", "jpeg", "avif") if isinstance(base.get(f), list)}


def interpolate_bytes(curve: list[dict], psnr: float) -> float | None:
    """Bytes per image of a codec at ``psnr`` by linear interpolation on its measured
    (psnr, bytes) points; None outside the measured range."""
    pts = sorted((r["psnr"], r["bytes_per_image"]) for r in curve if r["psnr"] is not None)
    ps = [p for p, _ in pts]
    if not pts or psnr < ps[0] or psnr > ps[-1]:
        return None
    return float(np.interp(psnr, ps, [b for _, b in pts]))


# ----------------------------------------------------------------------- ours
def fit_cached(
    data: str,
    name: str,
    params: dict,
    train: np.ndarray,
    cache: Path,
    reuse: bool,
    work: Path,
    prior: str = "auto",
) -> tuple[Path, dict]:
    """The fitted network (cached by its settings) with a prior of kind ``prior`` fitted in
    this run (as ``discretae fit --prior`` does; "auto" records both priors' held-out
    bits)."""
    key = json.dumps({"data": data, "n": len(train), **params}, sort_keys=True, default=list)
    folder = cache / f"{data}-{name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    network, meta_path = folder / "model.safetensors", folder / "meta.json"
    if not (reuse and meta_path.is_file() and network.is_file()):
        folder.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        est = DiscreteAutoencoder(**COMMON, **params).fit(train)
        meta = {"fit_seconds": time.perf_counter() - t, "key": key}
        est.save(network)
        write_text_atomic(meta_path, json.dumps(meta, indent=1))
    meta = json.loads(meta_path.read_text())
    path = work / "model.safetensors"
    est = DiscreteAutoencoder.load(network, device="cpu")
    t = time.perf_counter()
    code_prior = fit_prior(est, train, kind=prior)
    meta["prior_seconds"] = time.perf_counter() - t
    meta["prior"] = code_prior.choice
    t = time.perf_counter()
    save_prior(network, code_prior, out=path, refinement=fit_refinement(est, train))
    meta["refinement_seconds"] = time.perf_counter() - t
    return path, meta


def measure_model(
    path: Path,
    test: np.ndarray,
    work: Path,
    max_errors=(),
    rate_weights=(),
    steps=(),
    psnr_targets=(),
) -> list[dict]:
    """One point per level prefix (rvq) or one point: real archive size, quality, and the
    wall time to encode (network, then archive written) and decode (archive read, then
    network) the whole test split; the same again for each weight in ``rate_weights``
    (``compress --rate-weight``, vq and rvq). Then, for each level prefix and each maximum
    error in ``max_errors``, the archive with a refinement (``compress --max-error``), and
    for each step in ``steps`` with a transform refinement (``compress --step``)."""
    codec = load_codec(path, device="cpu")
    if load_prior(path) is None:
        raise SystemExit(f"{path} has no code prior")
    x = torch.from_numpy(test).float() / 255
    n = len(test)
    levels = range(1, codec.n_levels + 1) if codec.residual else [codec.n_levels]
    points = []
    weights = [0.0] + ([w for w in rate_weights if w > 0] if codec.est.model_.config["kind"]
                       in ("vq", "rvq") else [])  # fmt: skip
    coders = {}
    for w in weights:
        coder = coders[w] = codec.weighted(w)
        for lv in levels:
            archive = work / f"l{lv}-w{w:g}.dae"
            t = time.perf_counter()
            sym = np.concatenate(
                [coder.encode_images(x[s : s + BATCH]) for s in range(0, n, BATCH)]
            )
            data = coder.encode_codes(coder.to_codes(sym), levels=lv)
            with atomic_path(archive) as tmp:
                tmp.write_bytes(data)
            enc = time.perf_counter() - t
            size = archive.stat().st_size  # the real file
            t = time.perf_counter()
            got, _, _ = coder.decode_archive(archive.read_bytes())
            recon = np.concatenate(
                [coder.decode_images(got[s : s + BATCH]) for s in range(0, n, BATCH)]
            )
            dec = time.perf_counter() - t
            assert np.array_equal(got, sym[..., :lv]), "decoded codes differ"
            points.append({
                "levels": lv, "rate_weight": w, "archive_bytes": size,
                "bytes_per_image": size / n, "bits_per_image": 8 * size / n, "n_images": n,
                **quality(recon, test), "encode_s": enc, "decode_s": dec,
                "encode_images_per_s": n / enc, "decode_images_per_s": n / dec,
            })  # fmt: skip
    for lv in levels:
        for e in max_errors:
            points.append(_refined_point(codec, test, work, lv, e, False))
    for w, coder in coders.items():  # steps on the codes of every rate weight
        for lv in levels:
            for step in steps:
                points.append(_refined_point(coder, test, work, lv, step, True, w))
    return points + [_knob_point(codec, path, test, work, p) for p in psnr_targets]


def _knob_point(codec, path: Path, test: np.ndarray, work: Path, target: float) -> dict:
    """The archive ``compress --psnr target`` writes for the test images, as a user gets it
    (the setting chosen on its sample; rate weight, levels and refinement searched), read
    back and scored on every test image. Its encode time includes the search."""
    npy = work / "test-images.npy"
    if not npy.is_file():
        np.save(npy, test)
    archive = work / f"psnr{target:g}.dae"
    t = time.perf_counter()
    got = compress(str(npy), model=path, out=archive, psnr=target, names=False)
    enc = time.perf_counter() - t
    size = archive.stat().st_size
    t = time.perf_counter()
    recon, _, _ = codec.decompress(archive.read_bytes())
    dec = time.perf_counter() - t
    n = len(test)
    return {"psnr_target": target, "levels": got["levels"], "max_error": got["max_error"],
            "step": got["step"], "rate_weight": got["rate_weight"],
            "sample_psnr": got["psnr_target"]["sample_psnr"],
            "data_psnr": got["psnr_target"].get("data_psnr"),
            "passes": got["psnr_target"].get("passes", 1), "archive_bytes": size,
            "bytes_per_image": size / n, "bits_per_image": 8 * size / n, "n_images": n,
            **quality(recon, test), "encode_s": enc, "decode_s": dec,
            "encode_images_per_s": n / enc, "decode_images_per_s": n / dec}  # fmt: skip


def _refined_point(
    codec, test, work: Path, lv: int, value: int, transform: bool, rate_weight: float = 0.0
) -> dict:
    """One refined archive of the test images, written and read back: a max error (its
    bound checked, and the same archive with its refinement by class alone), or with
    ``transform`` a step (and its dead-zone peer), on the codes of ``codec`` (its rate
    weight ``rate_weight``)."""
    n, key = len(test), "step" if transform else "max_error"
    archive = work / f"l{lv}-w{rate_weight:g}-{'s' if transform else 'e'}{value}.dae"
    t = time.perf_counter()
    data = codec.encode_with_refinement(test, levels=lv, max_error=value, transform=transform)
    with atomic_path(archive) as tmp:
        tmp.write_bytes(data)
    enc = time.perf_counter() - t
    size = archive.stat().st_size
    t = time.perf_counter()
    recon, _, _ = codec.decompress(archive.read_bytes())
    dec = time.perf_counter() - t
    point = {"levels": lv, key: value, "rate_weight": rate_weight, "archive_bytes": size,
             "bytes_per_image": size / n,
             "bits_per_image": 8 * size / n, "n_images": n, **quality(recon, test),
             "encode_s": enc, "decode_s": dec,
             "encode_images_per_s": n / enc, "decode_images_per_s": n / dec}  # fmt: skip
    if not transform:
        worst = int(np.abs(recon.astype(np.int16) - test).max())
        assert worst <= value, f"refinement off by {worst} > {value}"
        by_class = len(refined_by_class(codec, data, test))
        point.update(worst_error=worst, by_class_archive_bytes=by_class,
                     by_class_bytes_per_image=by_class / n)  # fmt: skip
    else:
        fixed = dead_zone_archive(codec, data, test)
        point.update(dead_zone_archive_bytes=len(fixed), dead_zone_bytes_per_image=len(fixed) / n,
                     dead_zone_psnr=quality(codec.decompress(fixed)[0], test)["psnr"])  # fmt: skip
    return point


def dead_zone_archive(codec, data: bytes, test: np.ndarray) -> bytes:
    """The transform archive ``data`` of the images ``test`` with its residual quantized
    by the dead zone alone instead of the rate-distortion choice: the same codes and
    stream layout, a real archive, for the same run's comparison."""

    def dead_zone(x, base, sym, step):
        expect = codec.transform_expectation(sym, step)
        return transform_residual.encode_block(x, base, step, expect, rd=False)

    return _recoded(codec, data, test, dead_zone)


def refined_by_class(codec, data: bytes, test: np.ndarray) -> bytes:
    """The refined archive ``data`` of the images ``test`` with its refinement coded by class
    alone (format 3's layout, no neighbours): the same codes, a real archive, for the same
    run's comparison."""

    def by_class(x, base, sym, max_error):
        return codec.refinement.encode_block(x, base, sym, max_error, modes=False)

    return _recoded(codec, data, test, by_class, version=3)


def _recoded(codec, data: bytes, test: np.ndarray, encode, version: int | None = None) -> bytes:
    """The refined archive ``data`` of ``test`` with each block's refinement written again
    by ``encode(x, base, sym, value)`` (value: the archive's max error or step), the codes
    kept; as archive format ``version`` (None: the same)."""
    header, names, blocks = parse_archive(data)
    sym = codec.decode_archive(data)[0]
    codes, refine = [], []
    for b, (words, extra) in enumerate(zip(blocks, header.refine_words, strict=True)):
        part = slice(b * header.block, (b + 1) * header.block)
        codes.append(words[: len(words) - extra])
        base = codec.base_images(sym[part])
        refine.append(encode(test[part], base, sym[part], header.max_error))
    if version is not None:
        header = dataclasses.replace(header, version=version)
    return pack_archive(header, codes, names, refine)


def point_label(p: dict, multi: set) -> str:
    """'model', 'model L2' (an rvq prefix), 'model L2 e3' (with a refinement), 'model L2
    w0.02' (with a rate weight)."""
    label = p["model"] + (f" L{p['levels']}" if p["model"] in multi else "")
    label += f" e{p['max_error']}" if p.get("max_error") is not None else ""
    label += f" s{p['step']}" if p.get("step") is not None else ""
    label += f" w{p['rate_weight']:g}" if p.get("rate_weight") else ""
    return label + (f" (--psnr {p['psnr_target']:g})" if p.get("psnr_target") else "")


# ----------------------------------------------------------------------- report
def check_targets(points: list[dict], webp: list[dict], target_range=TARGET_RANGE) -> dict:
    lo, hi = target_range
    rows = []
    for p in points:
        w = interpolate_bytes(webp, p["psnr"])
        inside = lo <= p["psnr"] <= hi
        rows.append({
            "model": p["model"], "levels": p["levels"], "max_error": p.get("max_error"),
            "step": p.get("step"), "rate_weight": p.get("rate_weight"), "psnr": p["psnr"],
            "psnr_target": p.get("psnr_target"),
            "bytes_per_image": p["bytes_per_image"], "webp_bytes_at_same_psnr": w,
            "in_target_range": inside,
            "meets": (w is not None and p["bytes_per_image"] < w) if inside else None,
        })  # fmt: skip
    ours = [{"psnr": p["psnr"], "bytes_per_image": p["bytes_per_image"]} for p in points]
    pareto = _pareto(ours)
    front = [r for r in _pareto(rows) if r["in_target_range"]]
    edges = [lo, *(r["psnr"] for r in front), hi]
    knob = [r for r in rows if r["psnr_target"] is not None and r["in_target_range"]]
    at_aim = interpolate_bytes(pareto, AIM["psnr"])
    near = [r for r in rows if abs(r["psnr"] - NEAR_AIM["psnr"]) <= NEAR_AIM["within_db"]]
    ratios = [r["bytes_per_image"] / r["webp_bytes_at_same_psnr"] for r in near
              if r["webp_bytes_at_same_psnr"]]  # fmt: skip
    return {
        "required": f"every point of ours with PSNR in [{lo:g}, {hi:g}] dB has fewer bytes "
        "per image than WebP at the same PSNR",
        "target_range_db": [lo, hi],
        "near_aim": f"a point within {NEAR_AIM['within_db']} dB of {NEAR_AIM['psnr']} dB at "
        f"no more than {NEAR_AIM['webp_ratio']}x WebP's bytes at its PSNR",
        "best_ratio_near_aim": min(ratios) if ratios else None,
        "near_aim_met": bool(ratios) and min(ratios) <= NEAR_AIM["webp_ratio"],
        "highest_psnr": max((p["psnr"] for p in points), default=None),
        "above_high_psnr_met": any(p["psnr"] > HIGH_PSNR for p in points),
        "required_met": all(r["meets"] for r in rows if r["in_target_range"])
        and any(r["in_target_range"] for r in rows),
        "front": "every point of ours not beaten on both bytes and PSNR by another of ours "
        f"(what compress --psnr chooses among), with PSNR in [{lo:g}, {hi:g}] dB, has fewer "
        "bytes per image than WebP at the same PSNR",
        "front_met": bool(front) and all(r["meets"] for r in front),
        "front_points_in_range": len(front),
        "front_widest_gap_db": float(np.diff(edges).max()),
        "knob": "every point that compress --psnr T wrote (--psnr-targets), scored on every "
        f"test image, with PSNR in [{lo:g}, {hi:g}] dB, has fewer bytes per image than WebP "
        "at the same PSNR",
        "knob_met": bool(knob) and all(r["meets"] for r in knob),
        "knob_points_in_range": len(knob),
        "points": rows,
        "aim": f"at {AIM['psnr']} dB, at most {AIM['bytes_per_image']} bytes per image",
        "ours_bytes_at_aim_psnr": at_aim,
        "webp_bytes_at_aim_psnr": interpolate_bytes(webp, AIM["psnr"]),
        "aim_met": at_aim is not None and at_aim <= AIM["bytes_per_image"],
    }


def _pareto(points: list[dict]) -> list[dict]:
    """Points not beaten by another with more PSNR and fewer bytes, by PSNR."""
    best, out = float("inf"), []
    for p in sorted(points, key=lambda p: -p["psnr"]):
        if p["bytes_per_image"] < best:
            best = p["bytes_per_image"]
            out.append(p)
    return sorted(out, key=lambda p: p["psnr"])


def compressai_report(
    name: str,
    description: str,
    rows: list[dict],
    *,
    image_shape: tuple[int, int, int],
    n_images: int,
) -> dict:
    """One codec's curve in the layout of CompressAI's evaluation scripts.

    rows: operating points with ``bytes_per_image``, ``psnr``, ``ms_ssim`` (None when not
    computed), ``encode_s`` and ``decode_s`` (wall seconds for ``n_images``) and a
    ``label``; image_shape: (C, H, W). -> {"name", "description", "results": {"bpp",
    "psnr-rgb" (C 3) or "psnr" (C 1), "ms-ssim", "encoding_time", "decoding_time"}},
    lists in order of bpp, times in seconds per image, plus "operating_points" (the
    labels) and, when MS-SSIM is null, "ms-ssim-note"."""
    c, h, w = image_shape
    rows = sorted(rows, key=lambda r: r["bytes_per_image"])
    results = {
        "bpp": [8 * r["bytes_per_image"] / (h * w) for r in rows],
        "psnr-rgb" if c == 3 else "psnr": [r["psnr"] for r in rows],
        "ms-ssim": [r["ms_ssim"] for r in rows],
        "encoding_time": [r["encode_s"] / n_images for r in rows],
        "decoding_time": [r["decode_s"] / n_images for r in rows],
    }
    out = {"name": name, "description": description, "results": results,
           "operating_points": [r["label"] for r in rows]}  # fmt: skip
    note = ms_ssim_note(image_shape)
    if note is not None:
        out["ms-ssim-note"] = note
    return out


def write_compressai(folder: Path, dataset: str, result: dict) -> list[Path]:
    """rd-<dataset>-<codec>.json for ours (the Pareto points over our models) and each
    measured lossy Pillow codec; -> the paths written."""
    shape, n = tuple(result["image_shape"]), result["n_test"]
    where = (
        f"{dataset}, {n} test images {shape[1]}x{shape[2]} ({'RGB' if shape[0] == 3 else 'gray'})"
    )
    reports = {}
    if result["points"]:
        multi = {m["name"] for m in result["models"] if m["params"]["model"] == "rvq"}
        ours = [{**p, "label": point_label(p, multi)} for p in _pareto(result["points"])]
        models = ", ".join(m["name"] for m in result["models"])
        reports["discretae"] = compressai_report(
            "discretae",
            f"{where}: the real .dae archive of the whole split (header amortised), the "
            f"points of {models} not beaten on both bytes and PSNR; times: wall time for "
            "the split (network and archive) / images",
            ours, image_shape=shape, n_images=n,
        )  # fmt: skip
    for fmt, rows in lossy_curves(result["baselines"]).items():
        reports[fmt] = compressai_report(
            f"{fmt.upper()} (Pillow {PIL.__version__})",
            f"{where}: one file per image, quality {rows[0]['quality']}..{rows[-1]['quality']}; "
            "times: wall time of Pillow encode / decode for the split / images",
            [{**r, "label": f"q{r['quality']}"} for r in rows], image_shape=shape, n_images=n,
        )  # fmt: skip
    paths = []
    for codec, report in reports.items():
        path = folder / f"rd-{dataset}-{codec}.json"
        write_text_atomic(path, json.dumps(report, indent=1) + "\n")
        paths.append(path)
    return paths


def plot(name: str, result: dict, path: Path) -> None:
    """Ours, WebP, JPEG and AVIF (when measured): bytes per image (bottom axis, log) and
    bits per pixel (top axis) against PSNR; PNG's size as a vertical line."""
    fig = Figure(figsize=(7, 4.8), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    base = result["baselines"]
    styles = {"webp": "s-", "jpeg": "^-", "avif": "D-"}
    for fmt, rows in lossy_curves(base).items():
        ax.plot([r["bytes_per_image"] for r in rows], [r["psnr"] for r in rows], styles[fmt],
                label=f"{fmt.upper()} (Pillow)", alpha=0.8)  # fmt: skip
    ax.axvline(base["png"][0]["bytes_per_image"], color="gray", ls=":", label="PNG (lossless)")
    for model in result["models"]:
        mine = [p for p in result["points"] if p["model"] == model["name"]]
        pts = [p for p in mine if p.get("max_error") is None and p.get("step") is None
               and not p.get("rate_weight")]  # fmt: skip
        weighted = [p for p in mine if p.get("rate_weight") and p.get("step") is None]
        if weighted:
            ax.plot([p["bytes_per_image"] for p in weighted], [p["psnr"] for p in weighted],
                    "x", ms=5, label=f"discretae {model['name']}, rate-weighted")  # fmt: skip
        ax.plot([p["bytes_per_image"] for p in pts], [p["psnr"] for p in pts], "o-", lw=2,
                label=f"discretae {model['name']}")  # fmt: skip
        refined = _pareto([p for p in mine if p.get("max_error") is not None])
        if refined:
            ax.plot([p["bytes_per_image"] for p in refined], [p["psnr"] for p in refined],
                    "o--", lw=1.5, label=f"discretae {model['name']} + refinement")  # fmt: skip
            last = -float("inf")
            for p in refined:  # labels 1 dB apart at least: level prefixes crowd one max error
                if p["psnr"] >= last + 1.0:
                    last = p["psnr"]
                    ax.annotate(f"L{p['levels']} e{p['max_error']}",
                                (p["bytes_per_image"], p["psnr"]), textcoords="offset points",
                                xytext=(4, -10), fontsize=6)  # fmt: skip
        stepped = _pareto([p for p in mine if p.get("step") is not None])
        if stepped:
            ax.plot(
                [p["bytes_per_image"] for p in stepped],
                [p["psnr"] for p in stepped],
                "v-.",
                lw=1.5,
                label=f"discretae {model['name']} + transform (--step)",
            )
            last = -float("inf")
            for p in stepped:  # 1 dB apart at least, to the right: WebP runs on the left
                if p["psnr"] >= last + 1.0:
                    last = p["psnr"]
                    ax.annotate(f"L{p['levels']} s{p['step']}", (p["bytes_per_image"], p["psnr"]),
                                textcoords="offset points", xytext=(6, -8), fontsize=6)  # fmt: skip
        for p in pts:
            if model["params"]["model"] == "rvq":
                ax.annotate(f"L{p['levels']}", (p["bytes_per_image"], p["psnr"]),
                            textcoords="offset points", xytext=(4, -10), fontsize=7)  # fmt: skip
    if result["targets"]["issue_targets_apply"]:
        ax.axhspan(*result["targets"]["target_range_db"], color="green", alpha=0.05,
                   label="target range")  # fmt: skip
    if result["targets"]["aim_applies"]:
        ax.plot([AIM["bytes_per_image"]], [AIM["psnr"]], "k*", ms=10, label="aim")
    ax.set_xscale("log")
    lo, hi = ax.get_xlim()
    ticks = [t for t in (5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000) if lo <= t <= hi]
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_xticks([], minor=True)
    ax.set_xlim(lo, hi)
    _, h, w = result["image_shape"]
    top = ax.secondary_xaxis("top", functions=(lambda b: b * 8 / (h * w), lambda p: p * h * w / 8))
    top.set_xlabel(f"bits per pixel ({h}x{w})")
    # plain numbers at round values, no labelled minor ticks (they overlapped as 3x10^-1 ...)
    per_byte = 8 / (h * w)
    bpp = [t for t in (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20)
           if lo * per_byte <= t <= hi * per_byte]  # fmt: skip
    top.set_xticks(bpp, [f"{t:g}" for t in bpp])
    top.set_xticks([], minor=True)
    ax.set_xlabel("bytes per image (log)")
    ax.set_ylabel("PSNR, dB (mean over images)")
    n = result["n_test"]
    ax.set_title(f"{name}: {n} test images, rate-distortion", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def run_dataset(name: str, args, cache: Path, work: Path) -> dict:
    train, test, notes = load_split(name, args, cache)
    print(f"{name}: train {train.shape}, test {test.shape}", flush=True)
    result = {"n_train": len(train), "n_test": len(test), "image_shape": list(test.shape[1:]),
              "data": notes, "models": [], "points": []}  # fmt: skip
    for model_name, params in MODELS[name].items():
        if args.models and model_name not in args.models:
            continue
        if args.epochs is not None:
            params = {**params, "epochs": args.epochs}
        (work / model_name).mkdir(exist_ok=True)
        path, meta = fit_cached(name, model_name, params, train, cache, args.reuse,
                                work / model_name, args.prior)  # fmt: skip
        result["models"].append({"name": model_name, "params": params, **meta,
                                 "model_bytes": path.stat().st_size})  # fmt: skip
        for p in measure_model(path, test, work / model_name, args.max_errors,
                               args.rate_weights, args.steps, args.psnr_targets):  # fmt: skip
            result["points"].append({"model": model_name, **p})
            print(f"  {point_label({'model': model_name, **p}, {model_name})}: "
                  f"{p['bytes_per_image']:.1f} B/image, "
                  f"{p['psnr']:.2f} dB", flush=True)  # fmt: skip
    result["baselines"] = baselines(test)
    result["ms_ssim_note"] = ms_ssim_note(test.shape)
    result["targets"] = check_targets(result["points"], result["baselines"]["webp"],
                                      TARGET_RANGES.get(name, TARGET_RANGE))  # fmt: skip
    # the issue sets its required target on Fashion-MNIST and on colour (openclipart) and
    # its aim on Fashion-MNIST; elsewhere the same checks are comparisons
    result["targets"]["issue_targets_apply"] = name in TARGET_DATASETS
    result["targets"]["aim_applies"] = name == "fashion-mnist"
    result["throughput"] = throughput(result)
    return result


def throughput(result: dict) -> dict:
    n = result["n_test"]
    out = {"n_images": n, "threads": torch.get_num_threads(), "ours": []}
    for p in result["points"]:
        out["ours"].append({"model": p["model"], "levels": p["levels"],
                            "max_error": p.get("max_error"), "step": p.get("step"),
                            "rate_weight": p.get("rate_weight"),
                            "encode_images_per_s": p["encode_images_per_s"],
                            "decode_images_per_s": p["decode_images_per_s"]})  # fmt: skip
    base = result["baselines"]
    for fmt, rows in {"png": base["png"], **lossy_curves(base)}.items():
        for r in rows:
            if r["quality"] in (None, 10, 50):
                out[f"{fmt}_q{r['quality']}" if r["quality"] is not None else fmt] = {
                    "encode_images_per_s": n / r["encode_s"],
                    "decode_images_per_s": n / r["decode_s"],
                }
    return out


def print_table(name: str, result: dict) -> None:
    _, h, w = result["image_shape"]
    bpp = 8 / (h * w)
    print(f"\n{name} ({result['n_test']} test images, {h}x{w})")
    print(f"{'codec':<28}{'B/image':>9}{'bpp':>8}{'PSNR dB':>9}{'WebP B @PSNR':>14}{'meets':>7}")
    multi = {m["name"] for m in result["models"] if m["params"]["model"] == "rvq"}
    for r in result["targets"]["points"]:
        label = point_label(r, multi)
        wb = "-" if r["webp_bytes_at_same_psnr"] is None else f"{r['webp_bytes_at_same_psnr']:.1f}"
        m = {None: "-", True: "yes", False: "NO"}[r["meets"]]
        print(f"{label:<28}{r['bytes_per_image']:>9.1f}{r['bytes_per_image'] * bpp:>8.3f}"
              f"{r['psnr']:>9.2f}{wb:>14}{m:>7}")  # fmt: skip
    base = result["baselines"]
    for fmt, rows in {"webp": base["webp"], "jpeg": base["jpeg"], "avif": base["avif"],
                      "png": base["png"]}.items():  # fmt: skip
        if isinstance(rows, dict):
            print(f"{fmt.upper():<28}skipped: {rows['skipped']}")
            continue
        for r in rows:
            q = "" if r["quality"] is None else f" q{r['quality']}"
            ps = "lossless" if r["psnr"] is None else f"{r['psnr']:.2f}"
            print(f"{fmt.upper() + q:<28}{r['bytes_per_image']:>9.1f}"
                  f"{r['bytes_per_image'] * bpp:>8.3f}{ps:>9}")  # fmt: skip
    if result["ms_ssim_note"]:
        print(f"MS-SSIM: null ({result['ms_ssim_note']})")
    t = result["targets"]
    if not t["issue_targets_apply"]:
        print("(the issue's targets are set on Fashion-MNIST and openclipart; here a comparison)")
    lo, hi = t["target_range_db"]
    line = f"below WebP from {lo:g} to {hi:g} dB: {t['required_met']}"
    line += f" (our front's {t['front_points_in_range']} points there: {t['front_met']}, "
    line += f"widest gap {t['front_widest_gap_db']:.2f} dB)"
    if t["knob_points_in_range"]:
        line += f"; compress --psnr's {t['knob_points_in_range']} points there: {t['knob_met']}"
    line += f"; highest PSNR {t['highest_psnr']:.2f} dB (above {HIGH_PSNR:g}: "
    line += f"{t['above_high_psnr_met']})"
    if t["best_ratio_near_aim"] is not None:
        line += f"; within {NEAR_AIM['within_db']} dB of {NEAR_AIM['psnr']}: best "
        line += f"{t['best_ratio_near_aim']:.3f}x WebP (met: {t['near_aim_met']})"
    if t["aim_applies"]:
        line += (f"; at {AIM['psnr']} dB ours {t['ours_bytes_at_aim_psnr']} B vs WebP "
                 f"{t['webp_bytes_at_aim_psnr']} B; aim met: {t['aim_met']}")  # fmt: skip
    print(line)
    for p in result["points"]:
        if p.get("by_class_bytes_per_image") is not None:
            by_class = p["by_class_bytes_per_image"]
            print(f"  {point_label(p, multi)}: {p['bytes_per_image']:.1f} B/image, "
                  f"{by_class:.1f} with the refinement by class alone")  # fmt: skip
        if p.get("dead_zone_bytes_per_image") is not None:
            print(f"  {point_label(p, multi)}: {p['bytes_per_image']:.1f} B/image at "
                  f"{p['psnr']:.2f} dB; the dead zone alone: "
                  f"{p['dead_zone_bytes_per_image']:.1f} at {p['dead_zone_psnr']:.2f}")  # fmt: skip
    th = result["throughput"]
    for o in th["ours"]:
        label = point_label(o, multi)
        print(f"  {label}: encode {o['encode_images_per_s']:.0f} img/s, "
              f"decode {o['decode_images_per_s']:.0f} img/s")  # fmt: skip
    for k in ("webp_q10", "webp_q50", "jpeg_q50", "avif_q50", "png"):
        if k in th:
            print(f"  {k}: encode {th[k]['encode_images_per_s']:.0f} img/s, "
                  f"decode {th[k]['decode_images_per_s']:.0f} img/s")  # fmt: skip


DATASETS = {"both": ["fashion-mnist", "digits"], "all": ["fashion-mnist", "digits", "openclipart"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="both",
                    choices=["fashion-mnist", "digits", "openclipart", *DATASETS])  # fmt: skip
    ap.add_argument("--n-train", type=int, default=60000,
                    help="train images at most (Fashion-MNIST, openclipart)")  # fmt: skip
    ap.add_argument("--n-test", type=int, default=2000,
                    help="test images at most (Fashion-MNIST, openclipart)")  # fmt: skip
    ap.add_argument("--models", nargs="*", help="only these model names")
    ap.add_argument("--epochs", type=int, help="override every model's epochs")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--openclipart", type=Path, default=OPENCLIPART,
                    help="the openclipart-png folder")  # fmt: skip
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "discretae-rd")
    ap.add_argument("--reuse", action="store_true", help="reuse cached fits")
    ap.add_argument("--max-errors", type=int, nargs="*", default=list(MAX_ERRORS),
                    help="refinement points: these maximum errors, every level prefix")  # fmt: skip
    ap.add_argument("--steps", type=int, nargs="*", default=list(STEPS),
                    help="transform refinement points: these steps, each level prefix")  # fmt: skip
    ap.add_argument("--rate-weights", type=float, nargs="*", default=list(RATE_WEIGHTS),
                    help="rate-weighted points: these weights, every level prefix")  # fmt: skip
    ap.add_argument("--psnr-targets", type=float, nargs="*", default=[],
                    help="points of compress --psnr T (its chosen setting), each T")  # fmt: skip
    ap.add_argument(
        "--prior",
        choices=PRIOR_KINDS,
        default="auto",
        help="the code prior fitted on the training codes (fit --prior)",
    )
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if args.epochs is not None and args.epochs < 1:
        ap.error(f"--epochs {args.epochs} should be >= 1")
    torch.set_num_threads(args.threads)
    names = DATASETS.get(args.data, [args.data])
    args.out.mkdir(parents=True, exist_ok=True)
    date = dt.datetime.now(dt.timezone.utc)
    report = {
        **cpu_header("rate_distortion", "torch", "numpy", "pillow", "constriction", "discretae"),
        "threads": args.threads,
        "settings": {"common": COMMON, "psnr": "mean over images of 10 log10(255^2/MSE) "
                     f"on uint8 over all channels, capped at {PSNR_CAP}",
                     "ms_ssim": f"{len(MS_SSIM_WEIGHTS)} scales, Gaussian window "
                     f"{MS_SSIM_WINDOW} sigma {MS_SSIM_SIGMA}, weights {MS_SSIM_WEIGHTS}, "
                     f"only when the smaller side is >= {MS_SSIM_MIN_SIDE} px",
                     "target_range_db": TARGET_RANGES, "epochs_override": args.epochs,
                     "avif": avif_support() or "measured"},
        "reference_measured_earlier": REFERENCE,
        "datasets": {},
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as work:
        for name in names:
            (Path(work) / name).mkdir()
            result = run_dataset(name, args, args.cache, Path(work) / name)
            report["datasets"][name] = result
            print_table(name, result)
            png = args.out / f"rate_distortion-{name}-cpu-{date:%Y-%m-%d}.png"
            plot(name, result, png)
            result["plot"] = png.name
            result["compressai_files"] = [p.name for p in write_compressai(args.out, name, result)]
            print(f"wrote {png} and {', '.join(result['compressai_files'])}")
    suffix = "" if args.data == "both" else f"-{args.data}"
    path = args.out / f"rate_distortion{suffix}-cpu-{date:%Y-%m-%d}.json"
    write_text_atomic(path, json.dumps(report, indent=1, default=list))
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
