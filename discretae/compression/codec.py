"""Compression: images -> an entropy-coded ``.dae`` archive of codes -> images.

A :class:`Codec` is a fitted :class:`~discretae.DiscreteAutoencoder` plus its
:class:`~discretae.compression.prior.CodePrior`. The prior is fitted on training codes
(:func:`fit_prior`) and stored in the model file beside the network
(:func:`save_prior`: tensors ``prior.*`` and the config key ``code_prior``, which
``DiscreteAutoencoder.load`` ignores). A model without one codes every symbol with the
uniform prior, log2(K) bits, and says so.

``compress`` and ``decompress`` are the library functions behind the commands of the same
names; each returns a dict. ``Codec.measure`` reports the real archive size of codes
without writing a file (what ``discretae evaluate`` reports as archive bits).

Rate control: a model's codebook size and grid fix its rate; a residual (``rvq``) model
can also keep only its first ``levels`` levels per cell, fewer bits for a coarser image.
The binary format is documented in :mod:`discretae.compression.archive`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from discretae.compression.archive import HASH_BYTES, ArchiveHeader, pack_archive, parse_archive
from discretae.compression.prior import CodePrior
from discretae.core.errors import DiscretaeError
from discretae.core.files import atomic_path, check_writable
from discretae.core.serialization import read_model_file, write_model_file

BLOCK = 4096  # images per archive block
PRIOR_KEY = "code_prior"
_PNG = ".png"
Callback = Callable[[dict], None] | None
Warn = Callable[[str], None] | None


# ----------------------------------------------------------------------- the model side
def code_layout(est) -> tuple[tuple[int, int], int, int]:
    """((h, w), T, A) of a fitted estimator: grid cells, symbols per cell, alphabet."""
    model = est.model_
    grid = tuple(model.latent_shape) if model.latent_shape else (1, 1)
    tail = tuple(model.quantizer.code_tail)
    n_levels = int(np.prod(tail)) if tail else 1
    n_codes = 2 if model.config["kind"] == "binary" else int(model.config["n_codes"])
    return (int(grid[0]), int(grid[1])), n_levels, n_codes


def _code_vectors(est) -> list[np.ndarray | None]:
    """Per level t, the (A, D) codebook rows of its symbols (None for bits)."""
    q, kind = est.model_.quantizer, est.model_.config["kind"]
    if kind == "rvq":
        return [layer.codebook.detach().cpu().numpy() for layer in q.layers]
    if kind == "vq":
        return [q.codebook.detach().cpu().numpy()]
    if kind == "gumbel":
        return [q.codebook[g].detach().cpu().numpy() for g in range(q.groups)]
    return [None] * code_layout(est)[1]


def model_digest(est, prior: CodePrior) -> bytes:
    """The first 16 bytes of the sha256 of the network config, every tensor of the network
    (name, dtype, shape, bytes) and the prior: what an archive's codes depend on."""
    h = hashlib.sha256(b"discretae-model-digest-1")
    config = {"model": est.model_.config, "input_shape": list(est.input_shape_)}
    h.update(json.dumps(config, sort_keys=True).encode())
    for name, tensor in sorted(est.model_.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bool else t.to(torch.uint8).numpy())
    h.update(prior.digest())
    return h.digest()[:HASH_BYTES]


def fit_prior(est, X, *, batch_size: int = 1024, seed: int = 0) -> CodePrior:
    """Fit the code prior of a fitted estimator on training images X (as ``fit`` takes
    them): encodes X batch by batch and counts its codes in context."""
    codes = np.concatenate(
        [est.transform(X[i : i + batch_size]) for i in range(0, len(X), batch_size)]
    )
    grid, n_levels, n_codes = code_layout(est)
    sym = codes.reshape(len(codes), *grid, n_levels)
    return CodePrior.fit(sym, n_codes, _code_vectors(est), seed=seed)


def save_prior(model: str | os.PathLike, prior: CodePrior, out=None) -> None:
    """Store ``prior`` in the model file ``model`` (or a copy at ``out``), atomically,
    replacing any prior it had."""
    tensors, config = read_model_file(model)
    tensors = {k: v for k, v in tensors.items() if not k.startswith("prior.")}
    tensors.update({f"prior.{k}": v for k, v in prior.to_tensors().items()})
    config[PRIOR_KEY] = prior.config()
    write_model_file(out if out is not None else model, tensors, config)


def load_prior(model: str | os.PathLike) -> CodePrior | None:
    """The prior stored in a model file, or None when it has none."""
    tensors, config = read_model_file(model)
    if PRIOR_KEY not in config:
        return None
    prior_tensors = {k[len("prior.") :]: v for k, v in tensors.items() if k.startswith("prior.")}
    return CodePrior.from_tensors(prior_tensors, config[PRIOR_KEY])


class Codec:
    """Images or codes <-> archive bytes with one model and its prior.

    Args:
        est: a fitted DiscreteAutoencoder on images (C, H, W).
        prior: its CodePrior; None uses the uniform prior (log2 K bits per symbol).
    """

    def __init__(self, est, prior: CodePrior | None = None) -> None:
        if len(est.input_shape_) != 3:
            raise DiscretaeError(
                f"archives hold images; this model takes flat vectors {tuple(est.input_shape_)}"
            )
        self.est = est
        self.grid, self.n_levels, self.n_codes = code_layout(est)
        self.uniform = prior is None
        self.prior = prior or CodePrior.uniform(self.grid, self.n_levels, self.n_codes)
        if (self.prior.grid, self.prior.n_levels, self.prior.n_codes) != (
            self.grid,
            self.n_levels,
            self.n_codes,
        ):
            raise DiscretaeError(
                f"the code prior is for grid {self.prior.grid}, {self.prior.n_levels} "
                f"symbols of {self.prior.n_codes} codes per cell, but the model makes grid "
                f"{self.grid}, {self.n_levels} of {self.n_codes}"
            )
        self.digest = model_digest(est, self.prior)
        self.residual = est.model_.config["kind"] == "rvq"

    @classmethod
    def load(cls, model: str | os.PathLike, device: str = "auto") -> Codec:
        """The model file's estimator and prior (uniform when it has none)."""
        from discretae.commands import load_model

        est = load_model(model, device)
        return cls(est, load_prior(model))

    def check_levels(self, levels: int | None) -> int:
        """Validate a ``levels`` request; None means all."""
        if levels is None:
            return self.n_levels
        if not isinstance(levels, int) or isinstance(levels, bool) or levels < 1:
            raise DiscretaeError(f"levels must be an integer >= 1, got {levels!r}")
        if levels > self.n_levels or (levels < self.n_levels and not self.residual):
            what = (
                f"1..{self.n_levels}"
                if self.residual
                else f"{self.n_levels} (only rvq models decode a prefix of their levels)"
            )
            raise DiscretaeError(f"levels={levels}, but this model takes {what}")
        return levels

    # ------------------------------------------------------------------ codes
    def symbols(self, codes) -> np.ndarray:
        """codes (N, *code_shape_) -> symbols (N, h, w, T) int64."""
        c = np.asarray(codes)
        shape = tuple(self.est.code_shape_)
        if c.ndim < 1 or tuple(c.shape[1:]) != shape or c.dtype.kind not in "iub":
            raise DiscretaeError(
                f"codes must be integers of shape (N, {', '.join(map(str, shape))}) for this "
                f"model, got {c.dtype} {c.shape}".replace(", )", ")")
            )
        if c.size and (c.min() < 0 or c.max() >= self.n_codes):
            raise DiscretaeError(f"codes must lie in [0, {self.n_codes - 1}]")
        return c.reshape(len(c), *self.grid, self.n_levels).astype(np.int64)

    def encode_codes(self, codes, *, names: list[str] | None = None, levels=None) -> bytes:
        """codes (N, *code_shape_) -> archive bytes, keeping the first ``levels`` symbols
        per cell (rvq only; default all)."""
        levels = self.check_levels(levels)
        sym = self.symbols(codes)[..., :levels]
        if len(sym) == 0:
            raise DiscretaeError("no images to compress")
        header = ArchiveHeader(
            self.digest,
            len(sym),
            tuple(int(s) for s in self.est.input_shape_),
            self.grid,
            levels,
            self.n_codes,
            BLOCK,
            self.uniform,
        )
        blocks = [self.prior.encode_block(sym[i : i + BLOCK]) for i in range(0, len(sym), BLOCK)]
        return pack_archive(header, blocks, names)

    def read(self, data: bytes):
        """Archive bytes -> (header, names, words per block), checked against this model."""
        header, names, blocks = parse_archive(data)
        if header.model_hash != self.digest:
            raise DiscretaeError(
                "the archive was made with a different model (or code prior): model hash "
                f"{header.model_hash.hex()} in the archive, {self.digest.hex()} for this model"
            )
        expected = (
            tuple(int(s) for s in self.est.input_shape_),
            self.grid,
            self.n_codes,
            self.uniform,
        )
        got = (header.shape, header.grid, header.n_codes, header.uniform_prior)
        if got != expected or not 1 <= header.levels <= self.n_levels:
            raise DiscretaeError(f"corrupt archive: its header {got} does not fit the model")
        self.check_levels(header.levels)
        for n, words in zip(header.block_sizes(), blocks, strict=True):
            if n * self.grid[0] * self.grid[1] * header.levels > self.prior.max_symbols(len(words)):
                raise DiscretaeError(
                    f"corrupt archive: {n} images cannot be coded in {4 * len(words)} bytes"
                )
        return header, names, blocks

    def decode_blocks(self, header: ArchiveHeader, blocks):
        """Yield symbols (n, h, w, l) int64, block by block."""
        for n, words in zip(header.block_sizes(), blocks, strict=True):
            yield self.prior.decode_block(words, n, header.levels)

    def decode_codes(self, data: bytes) -> tuple[np.ndarray, list[str] | None, ArchiveHeader]:
        """Archive bytes -> (symbols (N, h, w, l) int64, names or None, header)."""
        header, names, blocks = self.read(data)
        return np.concatenate(list(self.decode_blocks(header, blocks))), names, header

    def to_codes(self, sym: np.ndarray) -> np.ndarray:
        """symbols (N, h, w, T) -> codes (N, *code_shape_) as ``transform`` gives them."""
        return sym.reshape(len(sym), *self.est.code_shape_)

    # ------------------------------------------------------------------ images
    @torch.inference_mode()
    def encode_images(self, x: torch.Tensor) -> np.ndarray:
        """x (B, C, H, W) float in [0, 1] -> symbols (B, h, w, T) int64."""
        codes = self.est.encode_batch(x).cpu().numpy()
        return codes.reshape(len(codes), *self.grid, self.n_levels).astype(np.int64)

    @torch.inference_mode()
    def decode_images(self, sym: np.ndarray) -> np.ndarray:
        """symbols (B, h, w, l) -> images (B, C, H, W) uint8. A prefix l < T (rvq) is
        decoded from the sum of its levels alone."""
        model = self.est.model_
        c = torch.from_numpy(np.ascontiguousarray(sym)).to(self.est.device_)
        if sym.shape[-1] == self.n_levels:
            c = c.reshape(len(sym), *self.est.code_shape_).to(model.code_dtype)
            x = self.est.decode_batch(c)
        else:
            c = c.reshape(len(sym), *model.latent_shape, sym.shape[-1])
            x = torch.sigmoid(model.decoder(model.quantizer.codes_to_latent(c)).float())
        return torch.round(x.float().clamp(0, 1) * 255).to(torch.uint8).cpu().numpy()

    def measure(self, codes, *, levels=None) -> dict:
        """Real archive size of ``codes`` (N, *code_shape_), without names, written nowhere:
        ``archive_bytes``, ``bytes_per_image`` and ``bits_per_image`` (header amortised),
        ``header_bytes`` (all but the payload), ``payload_bytes``, ``prior``."""
        data = self.encode_codes(codes, levels=levels)
        header, _, blocks = parse_archive(data)
        payload = 4 * sum(len(b) for b in blocks)
        n = header.n_images
        return {
            "archive_bytes": len(data),
            "bytes_per_image": len(data) / n,
            "bits_per_image": 8 * len(data) / n,
            "header_bytes": len(data) - payload,
            "payload_bytes": payload,
            "levels": header.levels,
            "prior": "uniform" if self.uniform else "context",
        }


# ----------------------------------------------------------------------- commands
def _safe_names(names: list[str] | None) -> list[str] | None:
    """Output file names (.png) from an archive's names, or None to number the images.

    Names that would leave the output folder raise; names that collide once given the
    .png suffix fall back to numbering."""
    if names is None:
        return None
    out = []
    for name in names:
        p = PurePosixPath(name)
        if (
            not name
            or "\\" in name
            or "\0" in name
            or p.is_absolute()
            or any(part in ("", ".", "..") for part in name.split("/"))
        ):
            raise DiscretaeError(f"corrupt archive: unsafe file name {name[:80]!r}")
        out.append(str(p.with_suffix(_PNG)) if p.suffix else f"{name}{_PNG}")
    return out if len(set(out)) == len(out) else None


def _save_png(path: Path, image: np.ndarray) -> None:
    """image (C, H, W) uint8 -> PNG."""
    from PIL import Image

    a = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(a)).save(path, format="PNG")


def _check_out(out: Path) -> bool:
    """True for a montage (.png), False for a folder; fail early if ``out`` is unusable."""
    if out.suffix.lower() == _PNG:
        check_writable(out)
        return True
    if out.exists():
        if not out.is_dir() or any(out.iterdir()):
            raise DiscretaeError(f"output {str(out)!r} exists and is not an empty folder")
        check_writable(out.parent / f".{out.name}.probe")
    else:
        check_writable(out)  # creates the parent folder, checks it is writable
    return False


def compress(
    data: str,
    *,
    model: str | os.PathLike,
    out: str | os.PathLike,
    levels: int | None = None,
    names: bool = True,
    batch_size: int = 256,
    device: str = "auto",
    strict: bool = False,
    callback: Callback = None,
    warn: Warn = None,
) -> dict:
    """Encode DATA with a model and write one ``.dae`` archive of entropy-coded codes.

    ``levels`` keeps the first levels of a residual (rvq) model: fewer bytes, a coarser
    image. ``names`` stores the images' file names when DATA has them (folders).
    Returns the archive's size, bytes and bits per image (header amortised), and more.
    """
    from discretae.commands import check_device, check_output
    from discretae.data.datasets import load_dataset

    check_output(out)
    check_device(device)
    codec = Codec.load(model, device)
    levels = codec.check_levels(levels)
    if codec.uniform and warn is not None:
        warn(
            f"model {str(model)!r} has no code prior: codes are stored at log2({codec.n_codes}) "
            "bits each; fit_prior/save_prior add one"
        )
    c, h, w = codec.est.input_shape_
    ds = load_dataset(data, image_size=(h, w), strict=strict, warn=warn)
    if len(ds.shape) != 3 or ds.shape[0] != c:
        raise DiscretaeError(
            f"the model takes images with {c} channel(s); {data!r} holds items of shape "
            f"{tuple(ds.shape)}"
        )
    parts, done, n = [], 0, len(ds)
    for images, _ in ds.batches(batch_size):
        parts.append(codec.encode_images(images))
        done += len(images)
        if callback is not None:
            callback({"stage": "encode", "done": done, "total": n})
    if not parts:
        raise DiscretaeError(f"no readable images in {data!r}")
    sym = np.concatenate(parts)
    stored = ds.names if names else None
    if stored is not None and any("\n" in s for s in stored):
        stored = None
        if warn is not None:
            warn("a file name holds a line break: names are not stored")
    archive = codec.encode_codes(codec.to_codes(sym), names=stored, levels=levels)
    with atomic_path(out) as tmp:
        tmp.write_bytes(archive)
    n = len(sym)
    header_bytes = len(archive) - 4 * sum(len(b) for b in parse_archive(archive)[2])
    return {
        "out": str(out),
        "n_images": n,
        "skipped": len(getattr(ds, "skipped", []) or []),
        "archive_bytes": len(archive),
        "bytes_per_image": len(archive) / n,
        "bits_per_image": 8 * len(archive) / n,
        "header_bytes": header_bytes,
        "levels": levels,
        "max_levels": codec.n_levels,
        "code_shape": [*codec.grid, levels],
        "n_codes": codec.n_codes,
        "prior": "uniform" if codec.uniform else "context",
        "names": stored is not None,
        "model_hash": codec.digest.hex(),
    }


def decompress(
    archive: str | os.PathLike,
    *,
    model: str | os.PathLike,
    out: str | os.PathLike,
    codes_out: str | os.PathLike | None = None,
    batch_size: int = 256,
    device: str = "auto",
    callback: Callback = None,
) -> dict:
    """Decode a ``.dae`` archive back into images.

    ``out`` is a folder that gets one PNG per image (its stored file name with a .png
    suffix, else its number), filled under a temporary name and renamed when complete; or
    a ``.png`` file that gets one montage of the first 400 images. ``codes_out`` also
    writes the decoded codes (.npy), exactly those that were encoded.
    """
    from discretae.commands import check_device

    src, out = Path(archive), Path(out)
    if not src.is_file():
        raise DiscretaeError(f"archive {str(src)!r} does not exist or is not a file")
    as_montage = _check_out(out)
    if codes_out is not None:
        check_writable(codes_out)
    check_device(device)
    data = src.read_bytes()
    parse_archive(data)  # a corrupt archive fails before the model is loaded
    codec = Codec.load(model, device)
    header, names, blocks = codec.read(data)
    files = _safe_names(names)
    n = header.n_images
    tmp = None if as_montage else Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    kept, all_sym, done = [], [], 0
    try:
        for sym in codec.decode_blocks(header, blocks):
            if codes_out is not None:
                all_sym.append(sym)
            for start in range(0, len(sym), batch_size):
                images = codec.decode_images(sym[start : start + batch_size])
                if as_montage:
                    kept.append(images[: max(0, 400 - done)])
                else:
                    for k, image in enumerate(images):
                        i = done + k
                        _save_png(tmp / (files[i] if files else f"{i:06d}{_PNG}"), image)
                done += len(images)
                if callback is not None:
                    callback({"stage": "decode", "done": done, "total": n})
        if codes_out is not None:
            from discretae.commands import save_npy, smallest_int_dtype

            sym = np.concatenate(all_sym)
            full = header.levels == codec.n_levels
            arr = codec.to_codes(sym) if full else sym
            save_npy(codes_out, arr.astype(smallest_int_dtype(codec.n_codes - 1)))
        if as_montage:
            from discretae.evaluation.figures import montage

            montage(np.concatenate(kept), out)
        else:
            if out.is_dir():
                out.rmdir()  # empty (checked); os.replace cannot overwrite a folder
            os.replace(tmp, out)
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {
        "out": str(out),
        "kind": "montage" if as_montage else "folder",
        "n_images": n,
        "image_shape": list(header.shape),
        "levels": header.levels,
        "names": files is not None,
        "codes": str(codes_out) if codes_out is not None else None,
        "archive_bytes": len(data),
        "bytes_per_image": len(data) / n,
    }
