"""discretae: turn images into discrete codes (VQ-VAE, Gumbel-softmax, binary autoencoders).

The names below are imported on first use (PEP 562), so ``import discretae`` and the
command line start without loading scikit-learn, which only the estimator needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from discretae._version import __version__

# public name -> the module that defines it
_EXPORTS = {
    "MODEL_KINDS": "autoencoder",
    "build_autoencoder": "autoencoder",
    "Codec": "codec",
    "compress": "codec",
    "decompress": "codec",
    "fit_prior": "codec",
    "load_prior": "codec",
    "save_prior": "codec",
    "ImageDataset": "data",
    "load_dataset": "data",
    "DiscretaeError": "errors",
    "NotFittedError": "errors",
    "DiscreteAutoencoder": "estimator",
    "nearest_code": "kernels",
    "nearest_code_with_sums": "kernels",
    "KMeans": "kmeans",
    "acc": "metrics",
    "ari": "metrics",
    "clustering_scores": "metrics",
    "code_usage": "metrics",
    "mse": "metrics",
    "nmi": "metrics",
    "psnr": "metrics",
    "purity": "metrics",
    "BinaryQuantizer": "quantizers",
    "GumbelQuantizer": "quantizers",
    "VectorQuantizer": "quantizers",
    "REPORT_KEYS": "report",
    "write_report": "report",
    "ResidualVectorQuantizer": "residual",
    "TrainingDiverged": "training",
    "TrainingInterrupted": "training",
}

__all__ = [
    "BinaryQuantizer",
    "Codec",
    "DiscretaeError",
    "DiscreteAutoencoder",
    "GumbelQuantizer",
    "ImageDataset",
    "KMeans",
    "MODEL_KINDS",
    "NotFittedError",
    "REPORT_KEYS",
    "ResidualVectorQuantizer",
    "TrainingDiverged",
    "TrainingInterrupted",
    "VectorQuantizer",
    "__version__",
    "acc",
    "ari",
    "build_autoencoder",
    "clustering_scores",
    "code_usage",
    "compress",
    "decompress",
    "fit_prior",
    "load_dataset",
    "load_prior",
    "mse",
    "nearest_code",
    "nearest_code_with_sums",
    "nmi",
    "psnr",
    "purity",
    "save_prior",
    "write_report",
]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'discretae' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"discretae.{module}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


if TYPE_CHECKING:  # for type checkers and IDEs: the eager form of the imports above
    from discretae.autoencoder import MODEL_KINDS, build_autoencoder
    from discretae.codec import Codec, compress, decompress, fit_prior, load_prior, save_prior
    from discretae.data import ImageDataset, load_dataset
    from discretae.errors import DiscretaeError, NotFittedError
    from discretae.estimator import DiscreteAutoencoder
    from discretae.kernels import nearest_code, nearest_code_with_sums
    from discretae.kmeans import KMeans
    from discretae.metrics import acc, ari, clustering_scores, code_usage, mse, nmi, psnr, purity
    from discretae.quantizers import BinaryQuantizer, GumbelQuantizer, VectorQuantizer
    from discretae.report import REPORT_KEYS, write_report
    from discretae.residual import ResidualVectorQuantizer
    from discretae.training import TrainingDiverged, TrainingInterrupted
