"""Report sections computed from whole arrays: clustering, code usage and bits per image
(the report's ``clustering``, ``codes`` and ``bits``; see :mod:`discretae.evaluation.report`)."""

from __future__ import annotations

import numpy as np

from discretae.evaluation.metrics import (
    clustering_scores,
    code_usage,
    empirical_entropy_bits_per_image,
    raw_bits_per_image,
)


def clustering_section(labels: np.ndarray | None, ids: np.ndarray | None) -> dict | None:
    """``clustering_scores`` of cluster ids (N,) against labels (N,), or None when there
    are no ids or no labels (all -1 counts as none)."""
    if labels is None or ids is None or not (labels >= 0).any():
        return None
    return clustering_scores(labels, ids)


def usage_section(codes: np.ndarray, n_codes: int, binary: bool) -> dict:
    """``metrics.code_usage`` of codes (N, ...) plus the per-image ``code_shape``."""
    if binary:  # one bit pattern per code position: (N, ..., B) -> (N * positions, B)
        usage = code_usage(codes.reshape(-1, codes.shape[-1]), binary=True)
    else:
        usage = code_usage(codes, n_codes)
    return {**usage, "code_shape": list(codes.shape[1:])}


def bits_section(codes: np.ndarray, n_codes: int, archive: dict | None = None) -> dict:
    """Raw fixed-width bits per image of codes (N, ...), and the real size of a ``.dae``
    archive of them (``Codec.measure``'s dict) when there is one, else the plug-in entropy
    estimate."""
    bits = {"raw_bits_per_image": raw_bits_per_image(tuple(codes.shape[1:]), n_codes)}
    if archive is not None:
        bits.update(
            archive_bits_per_image=archive["bits_per_image"],
            archive_bytes=archive["archive_bytes"],
            archive_prior=archive["prior"],
        )
    else:
        bits.update(
            empirical_entropy_bits_per_image=empirical_entropy_bits_per_image(codes),
            empirical_entropy_is_estimate=True,  # plug-in entropy, not a real bitstream
        )
    return bits
