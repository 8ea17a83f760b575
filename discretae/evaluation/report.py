"""The evaluation report: one JSON file with a stable top-level key set.

Top-level keys (``REPORT_KEYS``); a section that does not apply is ``null``:

- ``discretae_version``: the package version that wrote the report (filled in).
- ``created``: UTC time, ISO 8601 (filled in when absent).
- ``data``: what was evaluated, e.g. ``source``, ``n_images``, ``shape``, ``labeled``,
  ``label_names``, ``n_skipped``, ``skipped`` (the first few unreadable files).
- ``model``: the model file and its config, e.g. ``path``, ``kind`` (vq, gumbel,
  binary), ``config``; ``null`` when codes were evaluated without a model.
- ``clustering``: ``metrics.clustering_scores``: ``purity``, ``nmi``, ``acc``,
  ``ari``, ``n_clusters_used``, ``n_classes``, ``n_scored``; ``null`` without labels.
- ``codes``: ``metrics.code_usage``: ``n_codes``, ``counts``, ``used``,
  ``perplexity``, ``usage_fraction`` (binary: ``n_bits``, ``bit_means``,
  ``distinct_patterns`` instead of ``n_codes`` and ``counts``), plus ``code_shape``.
- ``reconstruction``: ``mse``, ``psnr`` (dB, over the whole set), ``data_range``;
  ``null`` when nothing was decoded.
- ``bits``: ``raw_bits_per_image`` (fixed-width codes), and where measured
  ``empirical_entropy_bits_per_image`` (an estimate, see ``metrics``) and the real size
  of an entropy-coded container, e.g. ``container_bits_per_image``.
- ``discriminator``: the label-free code score of :mod:`discretae.evaluation.discriminator`
  (``accuracy``, ``auc``, ``n_train``, ``n_test``, ``epochs``, ``chance_auc``, and
  ``n_images`` it drew from); ``null`` unless asked for (``evaluate --discriminator``).
- ``figures``: list of PNG paths written with the report.

Inside a section keys are free; the writer only converts values: numpy and torch
scalars and arrays become numbers and lists, paths become strings, and NaN or infinite
floats become ``null`` (JSON has no infinity; a PSNR of a perfect reconstruction reads
``null`` with ``mse`` 0). Keys are written sorted, so equal reports are equal files.
"""

from __future__ import annotations

import json
import math
import os
from datetime import datetime, timezone
from pathlib import Path, PurePath

import numpy as np

from discretae._version import __version__
from discretae.core.errors import DiscretaeError
from discretae.core.files import write_text_atomic

REPORT_KEYS = (
    "bits",
    "clustering",
    "codes",
    "created",
    "data",
    "discretae_version",
    "discriminator",
    "figures",
    "model",
    "reconstruction",
)


def _plain(value):
    """JSON-ready copy: numpy/torch to Python, paths to str, non-finite floats to None."""
    if hasattr(value, "detach"):  # torch tensor
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        value = value.tolist()
    elif isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value) if isinstance(value, (set, frozenset)) else value
        return [_plain(v) for v in items]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, PurePath):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise DiscretaeError(f"report value {value!r} of type {type(value).__name__} is not JSON")


def build_report(report: dict) -> dict:
    """The normalized report: every key of REPORT_KEYS present, values JSON-ready."""
    unknown = sorted(set(report) - set(REPORT_KEYS))
    if unknown:
        raise DiscretaeError(f"report has unknown top-level keys {unknown}; expected {REPORT_KEYS}")
    out = {k: None for k in REPORT_KEYS}
    out["figures"] = []
    out.update(_plain(report))
    out["discretae_version"] = __version__
    if out["created"] is None:
        out["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return out


def write_report(path: str | os.PathLike, report: dict) -> dict:
    """Write ``report`` (see module docs) as JSON atomically; return what was written."""
    out = build_report(report)
    text = json.dumps(out, indent=2, sort_keys=True, allow_nan=False) + "\n"
    write_text_atomic(Path(path), text)
    return out
