"""The exception users see. The CLI prints its message as one line and exits non-zero."""

from __future__ import annotations


class DiscretaeError(ValueError):
    """Bad input from a user: a missing path, a corrupt file, wrong shapes, a foreign model file.

    Subclasses ValueError so library callers can catch the usual type.
    """


class NotFittedError(DiscretaeError, AttributeError):
    """An estimator was used before ``fit``. Mirrors scikit-learn's NotFittedError."""
