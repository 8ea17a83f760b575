"""discretae: turn images into discrete codes (VQ-VAE, Gumbel-softmax, binary autoencoders).

The names below are imported on first use (PEP 562), so ``import discretae`` and the
command line start without loading scikit-learn, which only the estimator needs.
"""

from __future__ import annotations

import importlib
import os
import sys
from importlib.machinery import PathFinder

from discretae._version import __version__ as __version__  # re-exported


class _CheckoutFinder:
    """Finds ``discretae.kernels`` and ``discretae.cli`` in a source checkout's ``kernels/``
    and ``cli/``, which only an install maps into the package. Run from a clone's root,
    the clone's ``discretae/`` shadows an installed copy, and without this finder would
    lack them."""

    mapped = {"discretae.kernels", "discretae.cli"}

    def __init__(self, root: str):
        self.root = root

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self.mapped:
            return None
        return PathFinder.find_spec(fullname, [self.root])  # root/kernels -> discretae.kernels


def _find_checkout_folders() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)
    if os.path.isdir(os.path.join(here, "kernels")):
        return  # installed: the folders are inside the package
    if not os.path.isfile(os.path.join(root, "kernels", "__init__.py")):
        return
    if not any(isinstance(f, _CheckoutFinder) for f in sys.meta_path):
        sys.meta_path.append(_CheckoutFinder(root))


_find_checkout_folders()

# public name -> the module that defines it
_EXPORTS = {
    "MODEL_KINDS": "models.autoencoder",
    "build_autoencoder": "models.autoencoder",
    "Codec": "compression.codec",
    "compress": "commands.compress",
    "decompress": "commands.decompress",
    "fit_prior": "compression.codec",
    "load_prior": "compression.codec",
    "save_prior": "compression.codec",
    "ImageDataset": "data.datasets",
    "load_dataset": "data.loading",
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
