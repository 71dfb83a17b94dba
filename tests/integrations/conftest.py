"""Fixtures of the training-integration tests: tiny Llama models (random weights, never a
download: every model is built from a config or read from a local folder) from
``tiny_models`` beside this file. Each test module skips itself when its host library
(transformers, peft, axolotl) is missing."""

from __future__ import annotations

import os
import sys
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import pytest  # noqa: E402
import tiny_models  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture
def llama4():
    """A fresh 4-layer float32 Llama (untied head)."""
    pytest.importorskip("transformers")
    return tiny_models.llama(n_layers=4)


@pytest.fixture
def llama4_tied():
    pytest.importorskip("transformers")
    return tiny_models.llama(n_layers=4, tie=True)


@pytest.fixture(scope="module")
def llama4_saved(tmp_path_factory):
    """(model, folder): a 4-layer bf16 Llama and its save_pretrained folder."""
    pytest.importorskip("transformers")
    model = tiny_models.llama(n_layers=4, dtype=torch.bfloat16)
    folder = tmp_path_factory.mktemp("llama4")
    model.save_pretrained(folder)
    return model, folder
