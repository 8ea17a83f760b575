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
- ``bits``: ``raw_bits_per_image`` (fixed-width codes); then, for a model with a code
  prior, the real size of a ``.dae`` archive of the codes (``archive_bits_per_image``,
  ``archive_bytes``, ``archive_prior``), else ``empirical_entropy_bits_per_image`` with
  ``empirical_entropy_is_estimate`` true (a plug-in estimate, see ``metrics``).
- ``discriminator``: the label-free code score of :mod:`discretae.evaluation.discriminator`
  (``accuracy``, ``auc``, ``n_train``, ``n_test``, ``epochs``, ``chance_auc``, and
  ``n_images`` it drew from); ``null`` unless asked for (``evaluate --discriminator``).
- ``figures``: list of PNG paths written with the report.

Inside a section keys are free; the writer only converts values
(:func:`discretae.core.jsonable.jsonable`): numpy and torch scalars and arrays become
numbers and lists, paths become strings, and NaN or infinite floats become ``null``
(JSON has no infinity; a PSNR of a perfect reconstruction reads ``null`` with ``mse``
0). Keys are written sorted, so equal reports are equal files.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

from discretae._version import __version__
from discretae.core.errors import DiscretaeError
from discretae.core.files import write_text_atomic
from discretae.core.jsonable import jsonable

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


def build_report(report: dict) -> dict:
    """The normalized report: every key of REPORT_KEYS present, values JSON-ready."""
    unknown = sorted(set(report) - set(REPORT_KEYS))
    if unknown:
        raise DiscretaeError(f"report has unknown top-level keys {unknown}; expected {REPORT_KEYS}")
    out = {k: None for k in REPORT_KEYS}
    out["figures"] = []
    out.update(jsonable(report))
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
