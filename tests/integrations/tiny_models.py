"""Tiny models and training helpers for the integration tests (random weights, never a
download). Imported by this folder's conftest.py, its tests and the FSDP worker script."""

from __future__ import annotations

import dataclasses
from typing import Dict, Iterable, Optional, Set

import torch

VOCAB = 256


def llama_config(n_layers: int = 4, tie: bool = False, **kw):
    from transformers import LlamaConfig

    settings = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        tie_word_embeddings=tie,
    )
    settings.update(kw)
    return LlamaConfig(**settings)


def llama(n_layers: int = 4, tie: bool = False, seed: int = 0, dtype: torch.dtype = torch.float32, **kw):
    """A small ``LlamaForCausalLM`` with random weights (the same for the same seed)."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config(n_layers, tie, **kw))
    # Random init leaves some matrices with near-equal spectra; scale rows so that the
    # SNRs of one type differ clearly (the selection then does not hang on rounding).
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for _name, p in model.named_parameters():
            if p.dim() == 2:
                p.mul_(torch.rand(p.shape[0], 1, generator=g) * 2 + 0.1)
    return model.to(dtype)


def batch(seed: int = 0, size: int = 4, length: int = 16) -> Dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (size, length), generator=g)
    return {"input_ids": ids, "labels": ids.clone()}


def train_steps(model, optimizer, steps: int = 3, seed: int = 0) -> None:
    """A few real optimizer steps on random tokens."""
    model.train()
    for i in range(steps):
        out = model(**batch(seed + i))
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def snapshot(model) -> Dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def changed(before: Dict[str, torch.Tensor], after: Dict[str, torch.Tensor]) -> Set[str]:
    """Names whose values differ at all (bitwise)."""
    return {n for n in before if not torch.equal(before[n], after[n])}


def trainable(model) -> Set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def inverted(result, names: Optional[Iterable[str]] = None):
    """The scan with each SNR replaced by its inverse: the selection flips to the lowest
    layers of each type (a stale scan, to make layers enter and leave on a rescan)."""
    keep = None if names is None else set(names)
    layers = [
        dataclasses.replace(lay, snr=1.0 / lay.snr) if keep is None or lay.name in keep else lay
        for lay in result.layers
    ]
    return dataclasses.replace(result, layers=layers)
