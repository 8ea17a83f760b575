"""Shared test setup: Triton's interpreter on machines without CUDA, and the gpu marker.

triton.jit decides whether to interpret when a kernel module is imported, and pytest
imports this file before any test module, so this is the one reliable place to choose the
interpreter for the whole run. Only CPU-only machines get it: with CUDA the kernels are
compiled and tested on the GPU. An explicit TRITON_INTERPRET in the environment wins.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    """Skip tests marked ``gpu`` when there is no CUDA device."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def one_thread():
    """torch on one thread for the test, restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def rd():
    """benchmarks/rate_distortion.py as a module."""
    benchmarks = Path(__file__).resolve().parents[1] / "benchmarks"
    sys.path.insert(0, str(benchmarks))  # its sibling import: _common
    try:
        spec = importlib.util.spec_from_file_location(
            "rate_distortion", benchmarks / "rate_distortion.py"
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(benchmarks))
    return module
