"""Nearest-codebook search: a Triton kernel for GPUs and a chunked torch path for CPUs."""

from .api import nearest_code, nearest_code_with_sums, nearest_codes, triton_available

__all__ = ["nearest_code", "nearest_code_with_sums", "nearest_codes", "triton_available"]
