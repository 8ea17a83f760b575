"""discretae: turn images into discrete codes (VQ-VAE, Gumbel-softmax, binary autoencoders).

The names below are imported on first use (PEP 562), so ``import discretae`` and the
command line start without loading scikit-learn, which only the estimator needs.
"""

from __future__ import annotations

import importlib

from discretae._version import __version__ as __version__  # re-exported

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

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'discretae' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"discretae.{module}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
