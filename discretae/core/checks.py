"""Argument checks written once: each says what was given and what was expected."""

from __future__ import annotations

from discretae.core.errors import DiscretaeError


def check_int(name: str, value, low: int = 1, *, allow_none: bool = False) -> None:
    """Refuse anything but an int (not a bool) >= ``low``; None passes with ``allow_none``.

    Raises :class:`DiscretaeError` (a ``ValueError``) naming the setting and the value.
    """
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise DiscretaeError(f"{name} must be an integer >= {low}, got {value!r}")
