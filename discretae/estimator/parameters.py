"""What each parameter of ``DiscreteAutoencoder`` may be, stated once and checked in one place.

The idea of scikit-learn's ``_parameter_constraints`` (a table, one check), with
discretae's messages: a bad value raises :class:`DiscretaeError` naming the parameter and
the value. ``fit`` calls :func:`check_parameters`; ``__init__`` checks nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from dataclasses import dataclass

import numpy as np

from discretae.core.checks import check_int
from discretae.core.devices import PRECISIONS
from discretae.core.errors import DiscretaeError
from discretae.data.framing import RESIZE_MODES, check_size, parse_background
from discretae.estimator.fitted import resolve_device
from discretae.models.autoencoder import DECODERS, LATENTS, MODEL_KINDS
from discretae.models.training import check_lr_schedule


@dataclass(frozen=True)
class Integer:
    """An int (numpy ints too, never a bool) >= ``low``; None too with ``allow_none``."""

    low: int = 1
    allow_none: bool = False

    def __call__(self, name: str, value) -> None:
        if isinstance(value, np.integer):
            value = int(value)
        check_int(name, value, self.low, allow_none=self.allow_none)


@dataclass(frozen=True)
class Options:
    """One of ``values`` (a live collection: a registry may grow); ``message`` may use
    {name}, {value}, {options} (joined by commas) and {values} (the tuple)."""

    values: Collection[str]
    message: str = "{name}={value!r} is not one of {options}"

    def __call__(self, name: str, value) -> None:
        if not isinstance(value, str) or value not in self.values:
            names = tuple(self.values)
            text = self.message.format(
                name=name, value=value, options=", ".join(names), values=names
            )
            raise DiscretaeError(text)


@dataclass(frozen=True)
class PositiveNumber:
    """A finite int or float > 0, or None (the default is chosen at fit time)."""

    def __call__(self, name: str, value) -> None:
        number = 1.0 if value is None else value
        if not (isinstance(number, (int, float)) and math.isfinite(number) and number > 0):
            raise DiscretaeError(f"{name} must be a positive number, got {value!r}")


@dataclass(frozen=True)
class Seed:
    """An int (not a bool) or None."""

    def __call__(self, name: str, value) -> None:
        ok = value is None or isinstance(value, (int, np.integer)) and not isinstance(value, bool)
        if not ok:
            raise DiscretaeError(f"{name} must be an int or None, got {value!r}")


@dataclass(frozen=True)
class CallableOrNone:
    def __call__(self, name: str, value) -> None:
        if value is not None and not callable(value):
            raise DiscretaeError(f"{name} must be callable or None, got {value!r}")


@dataclass(frozen=True)
class CheckedBy:
    """A check written elsewhere, called with the value; None passes with ``allow_none``."""

    check: Callable[[object], object]
    allow_none: bool = False

    def __call__(self, name: str, value) -> None:
        if value is None and self.allow_none:
            return
        self.check(value)


@dataclass(frozen=True)
class WhenBuilt:
    """Checked when the model is built, where its meaning depends on the input shape or on
    the other parameters; ``where`` names that place."""

    where: str

    def __call__(self, name: str, value) -> None:
        return None


# Every parameter of DiscreteAutoencoder.__init__, checked in this order.
PARAMETER_CONSTRAINTS: dict[str, Callable[[str, object], None]] = {
    "model": Options(MODEL_KINDS, "unknown model {value!r}; valid models: {options}"),
    "latent": Options(LATENTS, "{name}={value!r} is not one of {values}"),
    "n_codes": Integer(1),
    "n_bits": Integer(1),
    "batch_size": Integer(1),
    "width": Integer(1),
    "epochs": Integer(1, allow_none=True),
    "lr_schedule": CheckedBy(check_lr_schedule, allow_none=True),
    "n_clusters": Integer(1, allow_none=True),
    "latent_dim": Integer(1, allow_none=True),
    "lr": PositiveNumber(),
    "random_state": Seed(),
    "callback": CallableOrNone(),
    "device": CheckedBy(resolve_device),
    "image_size": CheckedBy(check_size, allow_none=True),
    "resize": Options(RESIZE_MODES),
    "background": CheckedBy(parse_background),
    "decoder": Options(("auto", *DECODERS)),
    "precision": Options(PRECISIONS),
    "ensemble": Integer(1),
    "grid": WhenBuilt("build_autoencoder: it must fit the image"),
    "loss": WhenBuilt("build_autoencoder"),
    "quantizer_options": WhenBuilt("the quantizer's constructor"),
    "objectives": WhenBuilt("DiscreteAutoencoder: 'auto' depends on the input shape"),
    "objective_options": WhenBuilt("DiscreteAutoencoder and build_autoencoder"),
}


def check_parameters(params: dict) -> None:
    """Check ``params`` (``get_params(deep=False)``) against ``PARAMETER_CONSTRAINTS``;
    the first bad value raises :class:`DiscretaeError`."""
    for name, constraint in PARAMETER_CONSTRAINTS.items():
        constraint(name, params[name])
