"""The one JSON normaliser, for reports and for ``--json`` output."""

from __future__ import annotations

import math
from pathlib import PurePath

import numpy as np

from discretae.core.errors import DiscretaeError


def jsonable(value):
    """A JSON-ready copy of ``value``: torch tensors and numpy arrays become lists, numpy
    scalars Python numbers, paths strings, sets sorted lists, dict keys strings, and NaN
    or infinite floats ``None`` (JSON has neither). Anything else raises DiscretaeError."""
    if hasattr(value, "detach"):  # torch tensor
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        value = value.tolist()
    elif isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value) if isinstance(value, (set, frozenset)) else value
        return [jsonable(v) for v in items]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, PurePath):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise DiscretaeError(f"value {value!r} of type {type(value).__name__} is not JSON")
