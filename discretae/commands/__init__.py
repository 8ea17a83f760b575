"""The library functions behind the command line, one module per command. Each takes
keyword options named like the flags, never prints, raises :class:`DiscretaeError` with a
one-line message for anything a user can get wrong, and returns a JSON-able dict.

Python users can call them directly::

    from discretae.commands import encode, fit
    fit("digits", out="model.safetensors", epochs=5)
    encode("digits", model="model.safetensors", out="codes.npy")

They validate input and output paths before any long work and write every output
atomically (temporary name, then rename). Each command's module keeps scikit-learn
imports inside the functions that need them, so ``discretae encode`` starts without it.
A command shares its name with its module: ``from discretae.commands.fit import fit`` and
``from discretae.commands import fit`` give the same function.
"""

from __future__ import annotations

from discretae.commands.common import load_model
from discretae.commands.compress import compress
from discretae.commands.decode import decode
from discretae.commands.decompress import decompress
from discretae.commands.demo import demo
from discretae.commands.doctor import doctor
from discretae.commands.encode import encode
from discretae.commands.evaluate import evaluate
from discretae.commands.fit import FIT_DEFAULTS, default_checkpoint, fit
from discretae.commands.merge import merge
from discretae.core.distributed import env_rank

__all__ = [
    "FIT_DEFAULTS",
    "compress",
    "decode",
    "decompress",
    "default_checkpoint",
    "demo",
    "doctor",
    "encode",
    "env_rank",
    "evaluate",
    "fit",
    "load_model",
    "merge",
]
