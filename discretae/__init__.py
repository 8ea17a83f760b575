"""discretae: turn images into discrete codes (VQ-VAE, Gumbel-softmax, binary autoencoders)."""

from discretae._version import __version__
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

__all__ = [
    "MODEL_KINDS",
    "REPORT_KEYS",
    "BinaryQuantizer",
    "Codec",
    "ResidualVectorQuantizer",
    "TrainingDiverged",
    "TrainingInterrupted",
    "compress",
    "decompress",
    "fit_prior",
    "load_prior",
    "save_prior",
    "DiscreteAutoencoder",
    "DiscretaeError",
    "GumbelQuantizer",
    "ImageDataset",
    "KMeans",
    "NotFittedError",
    "VectorQuantizer",
    "__version__",
    "acc",
    "ari",
    "build_autoencoder",
    "clustering_scores",
    "code_usage",
    "load_dataset",
    "mse",
    "nearest_code",
    "nearest_code_with_sums",
    "nmi",
    "psnr",
    "purity",
    "write_report",
]
