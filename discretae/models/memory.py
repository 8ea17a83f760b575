"""What a fit will need in memory, estimated before any training step.

The estimate counts, for one image, the bytes of every layer's output in a forward pass
(measured with hooks on a 2-image probe, so it follows the real network), and scales
them by the batch, the number of augmented views, and a factor for what autograd keeps
and the backward pass allocates. A model with the neighbours objective (its ``mining``
set) encodes a third view each step, a mined neighbour of every image: the encoder's
share of the bytes counts once more for it, and the (N, k) int64 neighbour table is
added. It adds the parameters with their gradients and Adam's two moments, and the
training array itself. It is meant to be generous: a fit that it says fits does, and the
figures it gives are printed so a user can check them.
"""

from __future__ import annotations

import math
import os
import re

import torch
from torch import nn

from discretae.core.errors import DiscretaeError

# saved activations + their gradients + the backward's scratch, per forward byte.
# Measured on the CPU (gumbel recipe, batch 256, 2 views, RGB): peak resident memory
# above the baseline was 1.6x the summed layer outputs at 32x32 and 1.1x at 64x64.
BACKWARD_FACTOR = 2.0
FLOAT_BYTES = 4
INDEX_BYTES = 8  # int64, the neighbour table's entries
# interpreter, torch and the libraries: 293 MB in a bare script; a whole `discretae fit`
# of 70 clip-art images peaked at 700 MB for an estimate of 704 MB with 400 MB here
BASELINE_BYTES = 500 * 2**20


def activation_bytes_per_image(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Bytes of every module's output for one image in a training-mode forward pass."""
    return _probe(model, input_shape)[0]


def encoder_bytes_per_image(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """The encoder's share of :func:`activation_bytes_per_image`: the bytes of its
    modules' outputs for one image (0 for a model without an ``encoder``)."""
    return _probe(model, input_shape)[1]


def _probe(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, int]:
    """-> (bytes of every leaf module's output, bytes of the encoder's leaves' outputs)
    per image, from one forward pass of 2 images in eval mode."""
    encoder = getattr(model, "encoder", None)
    in_encoder = {id(m) for m in encoder.modules()} if isinstance(encoder, nn.Module) else set()
    totals = [0, 0]

    def count(module, _inputs, output) -> None:
        outs = output if isinstance(output, (tuple, list)) else (output,)
        n = sum(o.numel() for o in outs if isinstance(o, torch.Tensor))
        totals[0] += n
        if id(module) in in_encoder:
            totals[1] += n

    leaves = [m for m in model.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(count) for m in leaves]
    was_training = model.training
    try:
        model.eval()  # no augmentation or further views: those are counted by the caller
        with torch.no_grad():
            model(torch.rand(2, *input_shape))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return totals[0] * FLOAT_BYTES // 2, totals[1] * FLOAT_BYTES // 2


def fit_bytes(
    model: nn.Module, input_shape: tuple[int, ...], *, batch: int, views: int, n_images: int
) -> dict:
    """The estimate, by part, in bytes: ``{"activations", "parameters", "data",
    "baseline", "total"}``, and ``"neighbours"`` (the mined (N, k) int64 table) for a
    model with neighbour mining.

    ``views`` is the number of augmented views of every image (2 with view objectives);
    with neighbour mining the encoder also runs on a neighbour of each image, so its
    share of the activations counts for ``views + 1`` images.
    """
    per_image, encoder_per_image = _probe(model, input_shape)
    mining = getattr(model, "mining", None)
    activations = per_image * batch * views
    if mining is not None:
        activations += encoder_per_image * batch  # the neighbour view: encoder only
    parameters = sum(p.numel() for p in model.parameters()) * FLOAT_BYTES * 4
    data = n_images * math.prod(input_shape) * FLOAT_BYTES
    parts = {
        "activations": int(activations * BACKWARD_FACTOR),
        "parameters": parameters,
        "data": data,
        "baseline": BASELINE_BYTES,
    }
    if mining is not None:
        parts["neighbours"] = n_images * mining.k * INDEX_BYTES
    return {**parts, "total": sum(parts.values())}


def parse_bytes(text: str) -> int:
    """``"2G"``, ``"1.5GB"``, ``"800M"``, ``"512MiB"`` -> bytes (powers of 1024)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgGtT]?)(i?[bB])?\s*", str(text))
    if m is None or float(m.group(1)) <= 0:
        raise DiscretaeError(f"memory {text!r} should look like 2G, 1.5GB or 800M")
    power = " KMGT".index(m.group(2).upper() or " ")
    return int(float(m.group(1)) * 1024**power)


def available_bytes() -> int | None:
    """Memory the system can give now (Linux ``MemAvailable``, capped by a cgroup
    limit), or None where it cannot be read."""
    found = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found = int(line.split()[1]) * 1024
    except OSError:
        return None
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit() and found is not None:
            found = min(found, int(text))
    return found if found is not None else _sysconf_bytes()


def _sysconf_bytes() -> int | None:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
