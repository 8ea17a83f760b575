"""discretae: turn images into discrete codes (VQ-VAE, Gumbel-softmax, binary autoencoders).

The names below are imported on first use (PEP 562), so ``import discretae`` and the
command line start without loading scikit-learn, which only the estimator needs.
"""

from __future__ import annotations

import importlib

from discretae._version import __version__ as __version__  # re-exported

# public name -> the module that defines it
_EXPORTS = {
    "MODEL_KINDS": "models.autoencoder",
    "build_autoencoder": "models.autoencoder",
    "Codec": "compression.codec",
    "compress": "compression.codec",
    "decompress": "compression.codec",
    "fit_prior": "compression.codec",
    "load_prior": "compression.codec",
    "save_prior": "compression.codec",
    "ImageDataset": "data.datasets",
    "load_dataset": "data.datasets",
    "DiscretaeError": "core.errors",
    "NotFittedError": "core.errors",
    "DiscreteAutoencoder": "estimator.discrete_autoencoder",
    "nearest_code": "kernels",
    "nearest_code_with_sums": "kernels",
    "KMeans": "quantizers.kmeans",
    "acc": "evaluation.metrics",
    "ari": "evaluation.metrics",
    "clustering_scores": "evaluation.metrics",
    "code_usage": "evaluation.metrics",
    "mse": "evaluation.metrics",
    "nmi": "evaluation.metrics",
    "psnr": "evaluation.metrics",
    "purity": "evaluation.metrics",
    "BinaryQuantizer": "quantizers",
    "GumbelQuantizer": "quantizers",
    "VectorQuantizer": "quantizers",
    "REPORT_KEYS": "evaluation.report",
    "write_report": "evaluation.report",
    "ResidualVectorQuantizer": "quantizers.residual",
    "TrainingDiverged": "models.training",
    "TrainingInterrupted": "models.training",
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
