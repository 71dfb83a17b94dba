"""Deterministic synthetic Llama models for the benchmarks, written as real safetensors
files (Llama tensor names, bf16) with a ``config.json`` that ``transformers`` loads.

    python benches/models.py small llama8b-layer          # prints the model folders
    python benches/models.py small-x8 --dir /data/models  # ~3 GB, only when asked

Models are cached under ``$SPECTRUM_BENCH_MODELS`` (default
``/tmp/spectrum-rs-bench-models``): a folder is reused when its ``.complete`` marker
matches the spec, so reruns do not regenerate anything.

The weights look somewhat like trained ones, so that SNRs are spread out rather than
degenerate: each matrix is Gaussian noise (a per-tensor scale) plus a few low-rank
"signal" components whose strengths lie above the noise edge, their number and
strength drawn per tensor. Everything comes from ``torch.Generator`` seeded by the
tensor name, so a model is byte-identical on every run of the same torch version.
``small-x8`` repeats the 16 decoder layers of ``small`` 8 times (same tensor shapes,
128 layers, byte copies of ``small``'s tensors), which is quick to write.

The file format itself (header, streamed data, index, ``config.json``) is written by
``tests/helpers/safetensors_format.py``, the code the test models use for their hand-made
files: one implementation of the format for tests and benchmarks. This module holds what
only benchmarks need: the model specs, the synthetic weights, sharding and the cache.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch

_TESTS = str(Path(__file__).resolve().parent.parent / "tests")
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from helpers.safetensors_format import read_header, write_config, write_index, write_streamed  # noqa: E402

FORMAT_VERSION = 1
# Subfolder where bench_cpu.py caches float64 reference singular values of a model.
REFERENCE_CACHE = ".bench-ref-svd64"
DEFAULT_ROOT = Path(os.environ.get("SPECTRUM_BENCH_MODELS", "/tmp/spectrum-rs-bench-models"))


@dataclass(frozen=True)
class ModelSpec:
    name: str
    hidden: int
    layers: int
    mlp: int
    heads: int
    kv_heads: int
    vocab: int
    # Decoder layer i holds the tensors of layer ``i % repeat_of_layers`` of ``repeat_of``.
    repeat_of: Optional[str] = None
    # Largest shard in bytes (None: one model.safetensors file).
    shard_bytes: Optional[int] = None
    seed: int = 20240601

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def config(self) -> dict:
        """A config.json that transformers' LlamaConfig accepts."""
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": self.hidden,
            "intermediate_size": self.mlp,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab,
            "hidden_act": "silu",
            "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "attention_bias": False,
            "mlp_bias": False,
            "tie_word_embeddings": False,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "torch_dtype": "bfloat16",
        }

    def tensors(self) -> List[Tuple[str, Tuple[int, ...]]]:
        """(name, shape) of every tensor, in model order."""
        h, kv = self.hidden, self.kv_heads * self.head_dim
        out: List[Tuple[str, Tuple[int, ...]]] = [("model.embed_tokens.weight", (self.vocab, h))]
        for i in range(self.layers):
            p = f"model.layers.{i}."
            out += [
                (p + "input_layernorm.weight", (h,)),
                (p + "self_attn.q_proj.weight", (self.heads * self.head_dim, h)),
                (p + "self_attn.k_proj.weight", (kv, h)),
                (p + "self_attn.v_proj.weight", (kv, h)),
                (p + "self_attn.o_proj.weight", (h, self.heads * self.head_dim)),
                (p + "post_attention_layernorm.weight", (h,)),
                (p + "mlp.gate_proj.weight", (self.mlp, h)),
                (p + "mlp.up_proj.weight", (self.mlp, h)),
                (p + "mlp.down_proj.weight", (h, self.mlp)),
            ]
        out += [("model.norm.weight", (h,)), ("lm_head.weight", (self.vocab, h))]
        return out

    def nbytes(self) -> int:
        return sum(2 * int(np.prod(s)) for _, s in self.tensors())


MODELS: Dict[str, ModelSpec] = {
    # ~244M parameters, 0.49 GB.
    "small": ModelSpec("small", hidden=1024, layers=16, mlp=2816, heads=16, kv_heads=4, vocab=32000),
    # One decoder layer at Llama-3-8B sizes plus embedding and head: ~480M parameters, 0.96 GB.
    "llama8b-layer": ModelSpec("llama8b-layer", hidden=4096, layers=1, mlp=14336, heads=32, kv_heads=8, vocab=32000),
    # small's shapes, 8x the decoder layers (128): ~1.5G parameters, 2.9 GB in 3 shards.
    "small-x8": ModelSpec(
        "small-x8",
        hidden=1024,
        layers=128,
        mlp=2816,
        heads=16,
        kv_heads=4,
        vocab=32000,
        repeat_of="small",
        shard_bytes=1 << 30,
    ),
    # One decoder layer at Qwen1.5-110B sizes with a 32000-token vocabulary (the real one,
    # 152064, would triple the file for no new shape): ~1.9G parameters, 3.8 GB. Written on
    # the GPU machine by benches/bench_gpu.py for its end-to-end run.
    "qwen110b-layer": ModelSpec("qwen110b-layer", hidden=8192, layers=1, mlp=49152, heads=64, kv_heads=8, vocab=32000),
    # Tiny versions for testing the bench scripts themselves (--smoke).
    "tiny": ModelSpec("tiny", hidden=128, layers=2, mlp=352, heads=4, kv_heads=2, vocab=512),
    "tiny-x8": ModelSpec(
        "tiny-x8", hidden=128, layers=16, mlp=352, heads=4, kv_heads=2, vocab=512, repeat_of="tiny", shard_bytes=1 << 20
    ),
}


# --------------------------------------------------------------------------- weights


def _seed(spec_seed: int, name: str) -> int:
    return (spec_seed * 1_000_003 + zlib.crc32(name.encode())) & 0x7FFF_FFFF_FFFF


def synthetic_weight(name: str, shape: Tuple[int, ...], seed: int, device: str = "cpu") -> torch.Tensor:
    """A deterministic bf16 tensor (on the CPU) that looks a bit like a trained weight.
    ``device="cuda"`` draws it on the GPU (much faster; other numbers than the CPU's)."""
    g = torch.Generator(device=device).manual_seed(_seed(seed, name))
    kw = {"generator": g, "device": device}
    if len(shape) == 1:
        return (1.0 + 0.05 * torch.randn(shape, **kw)).to(torch.bfloat16).cpu()
    n, m = shape
    # Per-tensor knobs: noise scale, number and strength of the low-rank components.
    knobs = torch.rand(4, **kw).tolist()
    scale = (0.5 + knobs[0]) / np.sqrt(m)
    w = torch.randn(n, m, **kw)
    w.mul_(scale)
    k = 2 + int(knobs[1] * 30)  # 2..31 components
    edge = scale * (np.sqrt(n) + np.sqrt(m))  # largest singular value of the noise part
    strength = edge * (1.2 + (1.0 + 6.0 * knobs[2]) * torch.rand(k, **kw) ** (1.0 + 2.0 * knobs[3]))
    u = torch.randn(n, k, **kw)
    u /= u.norm(dim=0, keepdim=True)
    v = torch.randn(k, m, **kw)
    v /= v.norm(dim=1, keepdim=True)
    w.addmm_(u * strength, v)
    return w.to(torch.bfloat16).cpu()


def _bytes_of(t: torch.Tensor) -> memoryview:
    return memoryview(t.contiguous().view(torch.int16).numpy()).cast("B")


# --------------------------------------------------------------------------- writing

Entry = Tuple[str, Tuple[int, ...], Callable[[], memoryview]]


def write_safetensors(path: Path, entries: Sequence[Entry]) -> None:
    """Streams bf16 tensors into one safetensors file (header first, then each tensor's
    bytes as it is produced), so a model never has to be held in memory."""
    write_streamed(
        path, [(name, "BF16", shape, produce) for name, shape, produce in entries], metadata={"format": "pt"}
    )


class _SafetensorsBytes:
    """Byte ranges of the tensors of an existing safetensors file (for repeating them)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.header, self.base = read_header(path)
        self.map = np.memmap(path, dtype=np.uint8, mode="r")

    def get(self, name: str) -> memoryview:
        b, e = self.header[name]["data_offsets"]
        return memoryview(np.array(self.map[self.base + b : self.base + e]))


def _entries(spec: ModelSpec, root: Path, device: str = "cpu") -> List[Entry]:
    names = spec.tensors()
    if spec.repeat_of is None:
        return [(n, s, (lambda n=n, s=s: _bytes_of(synthetic_weight(n, s, spec.seed, device)))) for n, s in names]
    src_spec = MODELS[spec.repeat_of]
    src_dir = ensure(spec.repeat_of, root)
    src = _SafetensorsBytes(src_dir / "model.safetensors")
    out: List[Entry] = []
    for n, s in names:
        parts = n.split(".")
        if parts[:2] == ["model", "layers"]:
            parts[2] = str(int(parts[2]) % src_spec.layers)
        src_name = ".".join(parts)
        out.append((n, s, (lambda src_name=src_name: src.get(src_name))))
    return out


def _shards(spec: ModelSpec, entries: List[Entry]) -> List[List[Entry]]:
    if spec.shard_bytes is None:
        return [entries]
    shards: List[List[Entry]] = [[]]
    size = 0
    for e in entries:
        b = 2 * int(np.prod(e[1]))
        if shards[-1] and size + b > spec.shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(e)
        size += b
    return shards


def _marker(spec: ModelSpec, device: str = "cpu") -> str:
    d = {"format": FORMAT_VERSION, "spec": asdict(spec), "torch": torch.__version__.split("+")[0]}
    if device != "cpu":
        d["drawn_on"] = device
    return json.dumps(d, sort_keys=True)


def model_dir(name: str, root: Optional[Path] = None) -> Path:
    return Path(root or DEFAULT_ROOT) / name


def ensure(
    name: str, root: Optional[Path] = None, force: bool = False, quiet: bool = True, device: str = "cpu"
) -> Path:
    """The folder of model ``name``, written first unless a complete copy is there.
    ``device="cuda"`` draws the random weights on the GPU (fast; different numbers)."""
    if name not in MODELS:
        raise SystemExit(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    spec = MODELS[name]
    root = Path(root or DEFAULT_ROOT)
    folder = model_dir(name, root)
    marker = folder / ".complete"
    if not force and marker.is_file() and marker.read_text() == _marker(spec, device):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    if marker.exists():
        marker.unlink()
    for old in list(folder.glob("*.safetensors")) + list(folder.glob("*.json")):
        old.unlink()
    shutil.rmtree(folder / REFERENCE_CACHE, ignore_errors=True)
    if not quiet:
        print(f"writing {name} ({spec.nbytes() / 1e9:.2f} GB) to {folder} ...", file=sys.stderr, flush=True)
    write_config(folder, spec.config())
    shards = _shards(spec, _entries(spec, root, device))
    if len(shards) == 1:
        write_safetensors(folder / "model.safetensors", shards[0])
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            write_safetensors(folder / fname, shard)
            weight_map.update({n: fname for n, _, _ in shard})
        write_index(folder, weight_map, total_size=spec.nbytes())
    marker.write_text(_marker(spec, device))
    return folder


def main(argv: Optional[Iterable[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", choices=sorted(MODELS))
    ap.add_argument("--dir", type=Path, default=None, help=f"cache folder (default {DEFAULT_ROOT})")
    ap.add_argument("--force", action="store_true", help="write again even when a complete copy exists")
    args = ap.parse_args(list(argv) if argv is not None else None)
    for name in args.models:
        print(ensure(name, args.dir, force=args.force, quiet=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
