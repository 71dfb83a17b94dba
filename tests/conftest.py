"""Fixtures shared by every test area, and the process settings the suite runs under (one
BLAS/OpenMP thread). The helpers the tests import live in ``tests/helpers/`` (``from
helpers.models import ...``); this file puts tests/ on ``sys.path`` for that, and holds
fixtures only."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# The matrices here are tiny: one BLAS/OpenMP thread each is much faster than two
# threads spinning against each other (and against other work) on a small machine.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from typing import Dict  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from helpers.models import cast, llama_tensors, write_single  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(scope="session")
def llama_f64() -> Dict[str, torch.Tensor]:
    """The default ``llama_tensors()`` model in float64 (6 layers, with an all-zero matrix,
    outliers and an exact tie)."""
    return llama_tensors(seed=0)


@pytest.fixture(scope="session")
def small_llama_dir(tmp_path_factory) -> Path:
    """A small BF16 Llama model (single file) for tests that only need some model."""
    t = cast(
        llama_tensors(seed=1, n_layers=3, hidden=64, kv=16, inter=96, vocab=96, zero=None, outliers=(), tie_pair=None),
        "BF16",
    )
    return write_single(tmp_path_factory.mktemp("small_llama"), t)
