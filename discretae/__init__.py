"""discretae: turn images into discrete codes (VQ-VAE, Gumbel-softmax, binary autoencoders)."""

from discretae._version import __version__
from discretae.kernels import nearest_code, nearest_code_with_sums

__all__ = ["__version__", "nearest_code", "nearest_code_with_sums"]
