"""Catalogs at scale (issue 10): the host side of scanning a 100B+ checkpoint, measured on
checkpoints of the real shapes written as sparse files.

    python benches/bench_catalog.py                 # ~6 min on 2 cores; writes results/catalog-<date>.md/.json
    python benches/bench_catalog.py --smoke         # 30 s: the same steps on tiny shapes (results under --root)
    python benches/bench_catalog.py --keep --root /data/catalog-bench

1. A DeepSeek-V3-shaped checkpoint: 61 layers (the first 3 with a dense MLP, then MoE with
   256 routed experts ``mlp.experts.E.{gate,up,down}_proj``, ``mlp.shared_experts.*`` and the
   router ``mlp.gate``), MLA attention (``q_a_proj``, ``q_b_proj``, ``kv_a_proj_with_mqa``,
   ``kv_b_proj``, ``o_proj`` and their norms), embedding and head (vocab 129280, hidden
   7168); weights in ``F8_E4M3`` with ``weight_scale_inv`` F32 128x128 block scales, as the
   real checkpoint stores them; 60 shards, ``model.safetensors.index.json`` and a
   ``config.json`` with ``quantization_config.weight_block_size [128, 128]``. The
   multi-token-prediction layer 61 of the real checkpoint is not written. Each of
   ``_core.Catalog(paths)``, ``.layers()`` and a one-type scan
   (``spectrum_rs.scan(folder, types=["self_attn.kv_a_proj_with_mqa"], device="cpu")``) is
   timed in a fresh process, with its peak RSS.
2. A Qwen1.5-110B-shaped checkpoint (80 layers, hidden 8192, intermediate 49152, 64 heads
   and 8 KV heads, vocab 152064, bf16; 63 shards, about 222 GB) scanned for
   ``self_attn.k_proj`` and ``self_attn.v_proj`` (160 matrices of 1024 x 8192) by the
   command line on the CPU, with the page cache dropped first (cold) and again warm.
3. ``python -m spectrum_rs show`` on a result of every matrix of the DeepSeek catalog
   (synthetic SNRs: scanning 45,000 matrices on a CPU is not the point here), with the
   reference's types and with the experts of one projection grouped in one type.

Every data region is sparse (the header is written, then the file is truncated to its
full size) except the tensors a step scans, which hold random data: FP8 codes (NaN codes
left out) with random positive scales, random bf16. The files are written with the tests'
code for the format (``tests/helpers/safetensors_format.py``). The package measured is a
copy of ``python/spectrum_rs`` (with its compiled extension) taken at the start, so that a
rebuild in the working tree during the run cannot mix two versions; its sha256 is in the
results. Fixtures are deleted at the end unless ``--keep``; kept fixtures whose marker
matches are reused.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
_TESTS = str(REPO / "tests")
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from helpers.safetensors_format import DTYPE_SIZES, raw_safetensors, read_header, write_config, write_index  # noqa: E402

FORMAT_VERSION = 1
DEFAULT_ROOT = Path("/tmp/spectrum-rs-catalog-bench")
RESULT_TAG = "BENCH_CATALOG_RESULT "
DS_TYPE = "self_attn.kv_a_proj_with_mqa"
QWEN_TYPES = ["self_attn.k_proj", "self_attn.v_proj"]
_CLK = os.sysconf("SC_CLK_TCK")
MiB = 1 << 20

# (name, dtype, shape)
Tensor = Tuple[str, str, Tuple[int, ...]]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def nbytes(dtype: str, shape: Sequence[int]) -> int:
    return DTYPE_SIZES[dtype] * math.prod(int(d) for d in shape)


# =========================================================================== the shapes


def deepseek_v3(smoke: bool) -> Dict[str, Any]:
    """DeepSeek-V3's config.json numbers (the smoke run: the same structure, tiny)."""
    if smoke:
        return dict(
            layers=5, dense=2, experts=8, hidden=256, inter=512, moe_inter=128, vocab=1000, heads=4,
            q_lora=192, kv_lora=128, nope=32, rope=16, v_head=32, shards=4, block=128,
        )  # fmt: skip
    return dict(
        layers=61, dense=3, experts=256, hidden=7168, inter=18432, moe_inter=2048, vocab=129280, heads=128,
        q_lora=1536, kv_lora=512, nope=128, rope=64, v_head=128, shards=60, block=128,
    )  # fmt: skip


def deepseek_tensors(s: Dict[str, Any]) -> List[Tensor]:
    """Every tensor of the checkpoint in model order: FP8 weights each followed by its
    block scales ``[ceil(out/128), ceil(in/128)]``, norms and the router in bf16, the
    router's correction bias in F32."""
    b = s["block"]
    h = s["hidden"]
    out: List[Tensor] = []

    def fp8(name: str, rows: int, cols: int) -> None:
        out.append((f"{name}.weight", "F8_E4M3", (rows, cols)))
        out.append((f"{name}.weight_scale_inv", "F32", (-(-rows // b), -(-cols // b))))

    def mlp(prefix: str, inter: int) -> None:
        fp8(f"{prefix}.gate_proj", inter, h)
        fp8(f"{prefix}.up_proj", inter, h)
        fp8(f"{prefix}.down_proj", h, inter)

    out.append(("model.embed_tokens.weight", "BF16", (s["vocab"], h)))
    for i in range(s["layers"]):
        p = f"model.layers.{i}"
        out.append((f"{p}.input_layernorm.weight", "BF16", (h,)))
        fp8(f"{p}.self_attn.q_a_proj", s["q_lora"], h)
        out.append((f"{p}.self_attn.q_a_layernorm.weight", "BF16", (s["q_lora"],)))
        fp8(f"{p}.self_attn.q_b_proj", s["heads"] * (s["nope"] + s["rope"]), s["q_lora"])
        fp8(f"{p}.self_attn.kv_a_proj_with_mqa", s["kv_lora"] + s["rope"], h)
        out.append((f"{p}.self_attn.kv_a_layernorm.weight", "BF16", (s["kv_lora"],)))
        fp8(f"{p}.self_attn.kv_b_proj", s["heads"] * (s["nope"] + s["v_head"]), s["kv_lora"])
        fp8(f"{p}.self_attn.o_proj", h, s["heads"] * s["v_head"])
        out.append((f"{p}.post_attention_layernorm.weight", "BF16", (h,)))
        if i < s["dense"]:
            mlp(f"{p}.mlp", s["inter"])
        else:
            out.append((f"{p}.mlp.gate.weight", "BF16", (s["experts"], h)))
            out.append((f"{p}.mlp.gate.e_score_correction_bias", "F32", (s["experts"],)))
            for e in range(s["experts"]):
                mlp(f"{p}.mlp.experts.{e}", s["moe_inter"])
            mlp(f"{p}.mlp.shared_experts", s["moe_inter"])
    out.append(("model.norm.weight", "BF16", (h,)))
    out.append(("lm_head.weight", "BF16", (s["vocab"], h)))
    return out


def deepseek_config(s: Dict[str, Any]) -> Dict[str, Any]:
    return {
        "architectures": ["DeepseekV3ForCausalLM"],
        "model_type": "deepseek_v3",
        "hidden_size": s["hidden"],
        "intermediate_size": s["inter"],
        "moe_intermediate_size": s["moe_inter"],
        "num_hidden_layers": s["layers"],
        "first_k_dense_replace": s["dense"],
        "n_routed_experts": s["experts"],
        "n_shared_experts": 1,
        "num_experts_per_tok": 8,
        "num_attention_heads": s["heads"],
        "num_key_value_heads": s["heads"],
        "q_lora_rank": s["q_lora"],
        "kv_lora_rank": s["kv_lora"],
        "qk_nope_head_dim": s["nope"],
        "qk_rope_head_dim": s["rope"],
        "v_head_dim": s["v_head"],
        "vocab_size": s["vocab"],
        "num_nextn_predict_layers": 0,  # the real checkpoint's MTP layer 61 is not written
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "quantization_config": {
            "activation_scheme": "dynamic",
            "fmt": "e4m3",
            "quant_method": "fp8",
            "weight_block_size": [s["block"], s["block"]],
        },
    }


def qwen_110b(smoke: bool) -> Dict[str, Any]:
    if smoke:
        return dict(layers=4, hidden=256, inter=768, heads=8, kv_heads=2, vocab=1000, shards=3)
    return dict(layers=80, hidden=8192, inter=49152, heads=64, kv_heads=8, vocab=152064, shards=63)


def qwen_tensors(s: Dict[str, Any]) -> List[Tensor]:
    """Qwen1.5 (Qwen2 architecture): q/k/v with biases, untied head, bf16."""
    h, kv = s["hidden"], s["hidden"] // s["heads"] * s["kv_heads"]
    out: List[Tensor] = [("model.embed_tokens.weight", "BF16", (s["vocab"], h))]
    for i in range(s["layers"]):
        p = f"model.layers.{i}"
        out += [
            (f"{p}.input_layernorm.weight", "BF16", (h,)),
            (f"{p}.self_attn.q_proj.weight", "BF16", (h, h)),
            (f"{p}.self_attn.q_proj.bias", "BF16", (h,)),
            (f"{p}.self_attn.k_proj.weight", "BF16", (kv, h)),
            (f"{p}.self_attn.k_proj.bias", "BF16", (kv,)),
            (f"{p}.self_attn.v_proj.weight", "BF16", (kv, h)),
            (f"{p}.self_attn.v_proj.bias", "BF16", (kv,)),
            (f"{p}.self_attn.o_proj.weight", "BF16", (h, h)),
            (f"{p}.post_attention_layernorm.weight", "BF16", (h,)),
            (f"{p}.mlp.gate_proj.weight", "BF16", (s["inter"], h)),
            (f"{p}.mlp.up_proj.weight", "BF16", (s["inter"], h)),
            (f"{p}.mlp.down_proj.weight", "BF16", (h, s["inter"])),
        ]
    out += [("model.norm.weight", "BF16", (h,)), ("lm_head.weight", "BF16", (s["vocab"], h))]
    return out


def qwen_config(s: Dict[str, Any]) -> Dict[str, Any]:
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": s["hidden"],
        "intermediate_size": s["inter"],
        "num_hidden_layers": s["layers"],
        "num_attention_heads": s["heads"],
        "num_key_value_heads": s["kv_heads"],
        "vocab_size": s["vocab"],
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
    }


# =========================================================================== random data


def fp8_codes(rng: np.random.Generator, n: int) -> np.ndarray:
    """Uniformly random E4M3 codes without the NaN codes (S.1111.111)."""
    b = rng.integers(0, 256, size=n, dtype=np.uint8)
    nan = (b & 0x7F) == 0x7F
    b[nan] ^= 0x01  # -> S.1111.110, +-448
    return b


def random_data(dtype: str, shape: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    n = math.prod(shape)
    if dtype == "F8_E4M3":
        return fp8_codes(rng, n)
    if dtype == "F32":  # block scales: positive, around DeepSeek-V3's magnitudes
        return rng.uniform(0.5e-4, 4e-4, size=n).astype("<f4")
    if dtype == "BF16":  # N(0, 0.02^2), float32 rounded to nearest-even bf16
        u = (rng.standard_normal(n, dtype=np.float32) * np.float32(0.02)).view(np.uint32)
        return ((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)).astype("<u2")
    raise ValueError(dtype)


# =========================================================================== sparse checkpoints


def shard_plan(tensors: List[Tensor], shards: int) -> List[List[Tensor]]:
    """Tensors in model order over ``shards`` files of about equal size (each tensor goes
    to the shard its middle byte falls in)."""
    total = sum(nbytes(d, s) for _, d, s in tensors)
    out: List[List[Tensor]] = [[] for _ in range(shards)]
    done = 0
    for t in tensors:
        size = nbytes(t[1], t[2])
        out[min(shards - 1, int((done + size / 2) / total * shards))].append(t)
        done += size
    if any(not s for s in out):
        raise RuntimeError(f"{sum(1 for s in out if not s)} of {shards} shards would be empty")
    return out


def write_sparse_shard(path: Path, tensors: List[Tensor], real: Callable[[str], bool], rng: np.random.Generator) -> int:
    """One safetensors file: the header (as ``write_streamed`` lays it out: compact JSON
    padded with spaces to an 8-byte data start) by the tests' ``raw_safetensors``, then the
    file truncated to its full size (a hole), then the bytes of the tensors ``real`` picks
    written at their offsets. Returns the bytes of real data written."""
    header: Dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, dtype, shape in tensors:
        size = nbytes(dtype, shape)
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    tmp = path.with_suffix(path.suffix + ".tmp")
    raw_safetensors(tmp, raw)
    start = 8 + len(raw)
    os.truncate(tmp, start + offset)
    written = 0
    fd = os.open(tmp, os.O_WRONLY)
    try:
        for name, dtype, shape in tensors:
            if real(name):
                data = random_data(dtype, shape, rng)
                assert data.nbytes == nbytes(dtype, shape)
                os.pwrite(fd, data.tobytes(), start + header[name]["data_offsets"][0])
                written += data.nbytes
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    back, data_start = read_header(path)  # the tests' reader agrees with what was written
    assert data_start == start and len(back) == len(tensors) + 1, path
    return written


def write_checkpoint(
    folder: Path, name: str, tensors: List[Tensor], shards: int, config: Dict[str, Any], real: Callable[[str], bool]
) -> Dict[str, Any]:
    """A sharded checkpoint of sparse files (reused when its ``.complete`` marker matches)."""
    spec = {
        "format": FORMAT_VERSION,
        "name": name,
        "shards": shards,
        "config": config,
        "tensors": len(tensors),
        "sha": hashlib.sha256(json.dumps(tensors).encode()).hexdigest(),
    }
    marker = folder / ".complete"
    if marker.is_file():
        old = json.loads(marker.read_text())
        if old.get("spec") == spec:
            log(f"{name}: reusing {folder}")
            return dict(old["info"], reused=True)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    t0 = time.perf_counter()
    plan = shard_plan(tensors, shards)
    rng = np.random.default_rng(20261201)
    weight_map: Dict[str, str] = {}
    real_bytes = 0
    for k, part in enumerate(plan, 1):
        fname = f"model-{k:05d}-of-{shards:05d}.safetensors"
        real_bytes += write_sparse_shard(folder / fname, part, real, rng)
        weight_map.update({t[0]: fname for t in part})
        if k == 1:
            st = os.stat(folder / fname)
            if st.st_blocks * 512 > real_bytes + 64 * MiB:
                raise SystemExit(
                    f"{folder}: this filesystem does not keep sparse files sparse ({st.st_blocks * 512} B used)"
                )
    total = sum(nbytes(d, s) for _, d, s in tensors)
    write_index(folder, weight_map, total_size=total)
    write_config(folder, config)
    files = sorted(folder.glob("*.safetensors"))
    info = {
        "folder": str(folder),
        "tensors": len(tensors),
        "shards": len(files),
        "apparent_bytes": sum(f.stat().st_size for f in files),
        "allocated_bytes": sum(f.stat().st_blocks * 512 for f in files),
        "tensor_bytes": total,
        "real_bytes": real_bytes,
        "real_tensors": sum(1 for t in tensors if real(t[0])),
        "header_bytes": sum(read_header(f)[1] for f in files),
        "write_s": round(time.perf_counter() - t0, 2),
    }
    marker.write_text(json.dumps({"spec": spec, "info": info}))
    log(
        f"{name}: wrote {len(files)} shards, {info['apparent_bytes'] / 1e9:.1f} GB apparent, {real_bytes / 1e9:.2f} GB real"
    )
    return dict(info, reused=False)


def drop_cache(folder: Path) -> None:
    """Asks the kernel to drop the clean cached pages of the folder's files (no root needed)."""
    for f in folder.iterdir():
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


# =========================================================================== subprocesses


def _busy_s() -> float:
    """CPU seconds all CPUs spent busy since boot (/proc/stat; hypervisor steal counted)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v[:3]) + sum(v[5:8])) / _CLK


def run_process(cmd: List[str], env: Dict[str, str], cwd: Path) -> Dict[str, Any]:
    """Runs a command in a fresh process: its wall time, its own rusage (``wait4``: peak
    RSS, blocks read, major faults), the CPU other processes used meanwhile, its output."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        b0, t0 = _busy_s(), time.perf_counter()
        p = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=str(cwd))
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        busy = _busy_s() - b0
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{stderr[-4000:]}")
    cpu = ru.ru_utime + ru.ru_stime
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "maxrss_mib": ru.ru_maxrss / 1024,  # KiB on Linux
        "inblock_bytes": ru.ru_inblock * 512,
        "majflt": ru.ru_majflt,
        "foreign_cores": max(0.0, busy - cpu - 3 / _CLK) / wall if wall > 0 else 0.0,
        "stdout": stdout,
        "stderr": stderr,
    }


def run_child(kind: str, env: Dict[str, str], cwd: Path, *args: str) -> Dict[str, Any]:
    r = run_process([sys.executable, str(Path(__file__).resolve()), "--child", kind, *args], env, cwd)
    for line in reversed(r["stdout"].splitlines()):
        if line.startswith(RESULT_TAG):
            r["child"] = json.loads(line[len(RESULT_TAG) :])
            break
    else:
        raise RuntimeError(f"child {kind}: no result line:\n{r['stdout'][-2000:]}\n{r['stderr'][-2000:]}")
    del r["stdout"]
    r["stderr"] = r["stderr"][-2000:]
    return r


# --------------------------------------------------------------------------- in the child


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def _io() -> Dict[str, int]:
    out = {}
    with open("/proc/self/io") as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k.strip()] = int(v)
    return out


def child(kind: str, folder: Path, extra: List[str]) -> Dict[str, Any]:
    t0 = time.perf_counter()
    import spectrum_rs
    from spectrum_rs import _core

    r: Dict[str, Any] = {
        "module": str(Path(spectrum_rs.__file__).parent),
        "version": spectrum_rs.__version__,
        "import_s": time.perf_counter() - t0,
        "rss_after_import_mib": _status_kib("VmRSS") / 1024,
    }
    from spectrum_rs.model.config import fp8_scale_block, read_config

    block = fp8_scale_block(read_config(folder))  # what scan() passes
    if kind in ("open", "layers"):
        t = time.perf_counter()
        cat = _core.Catalog([str(folder)], scale_block=block)
        r["open_s"] = time.perf_counter() - t
        r["files"] = len(cat.files())
        if kind == "layers":
            t = time.perf_counter()
            layers = cat.layers()
            r["layers_s"] = time.perf_counter() - t
            r["layers"] = len(layers)
            t = time.perf_counter()
            chosen = cat.select([extra[0]]) if extra else []
            r["select_s"] = time.perf_counter() - t
            r["selected"] = len(chosen)
            r["matrices"] = len(cat.select())
            r["types"] = len({layer.type for layer in layers})
    elif kind == "scan":
        t = time.perf_counter()
        result = spectrum_rs.scan(str(folder), types=extra, device="cpu")
        r["scan_s"] = time.perf_counter() - t
        r["scan_settings_s"] = result.settings["seconds"]
        r["device"] = result.settings["device"]
        r["scanned"] = len(result)
        r["snr_finite"] = sum(1 for layer in result if math.isfinite(layer.snr))
    elif kind == "synth":
        return child_synth(folder, Path(extra[0]), r)
    else:
        raise SystemExit(f"unknown child {kind}")
    r["vmhwm_mib"] = _status_kib("VmHWM") / 1024
    r["io"] = _io()
    return r


def grouped_type(t: str) -> str:
    """The expert index of a type as ``*`` (the rule of ``group_experts``, rust/layout/kinds.rs)."""
    return re.sub(r"(^|\.)experts\.\d+(?=\.|$)", r"\1experts.*", t)


def child_synth(folder: Path, out: Path, r: Dict[str, Any]) -> Dict[str, Any]:
    """A result of every matrix of the catalog (the scan's default: 2-D only) with synthetic
    SNRs, saved twice by ``ScanResult.save``: the reference's types, experts grouped."""
    from spectrum_rs import _core
    from spectrum_rs.results import LayerResult, ScanResult

    cat = _core.Catalog([str(folder)], scale_block=(128, 128))
    layers = cat.layers()
    chosen = cat.select()
    rng = np.random.default_rng(7)
    snrs = rng.lognormal(mean=0.0, sigma=1.0, size=len(chosen))
    for variant, kind in (("reference-types", lambda t: t), ("grouped-experts", grouped_type)):
        res = ScanResult(
            model_name=f"deepseek-v3-shaped-{variant}",
            layers=[
                LayerResult(
                    name=layers[i].name, type=kind(layers[i].type), snr=float(s), shape=(layers[i].rows, layers[i].cols)
                )
                for i, s in zip(chosen, snrs)
            ],
        )
        t = time.perf_counter()
        paths = res.save(out / variant)
        r[variant] = {
            "results": str(paths["results"]),
            "layers": len(res),
            "types": len(res.types),
            "save_s": time.perf_counter() - t,
        }
    return r


# =========================================================================== the run


def machine_info() -> Dict[str, Any]:
    info: Dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform()}
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    for line in lscpu.splitlines():
        k, _, v = line.partition(":")
        if k.strip() in ("Model name", "CPU(s)", "Thread(s) per core", "Core(s) per socket", "Socket(s)"):
            info[k.strip()] = v.strip()
    info["cpus_usable"] = len(os.sched_getaffinity(0))
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                info["RAM_GiB"] = round(int(line.split()[1]) / 2**20, 1)
    info["numpy"] = np.__version__
    return info


def versions(product: Path) -> Dict[str, Any]:
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], capture_output=True, text=True, cwd=REPO).stdout.rstrip("\n")

    so = product / "spectrum_rs" / "_core.abi3.so"
    src_so = REPO / "python" / "spectrum_rs" / "_core.abi3.so"
    dirty = git("status", "--porcelain", "--", "python", "rust", "Cargo.toml", "Cargo.lock")
    return {
        "git_head": git("rev-parse", "HEAD"),
        "git_head_subject": git("log", "-1", "--format=%cI %s"),
        "uncommitted": [line[3:] for line in dirty.splitlines()],
        "core_sha256": hashlib.sha256(so.read_bytes()).hexdigest(),
        "core_built": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(src_so.stat().st_mtime)),
        "product_copy": str(product),
    }


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def freeze_product(root: Path) -> Path:
    """A copy of the package as it is now (Python files + the compiled extension)."""
    src = REPO / "python" / "spectrum_rs"
    if not (src / "_core.abi3.so").is_file():
        raise SystemExit(f"{src}/_core.abi3.so missing: build the extension first (pip install -e .)")
    dst = root / "product"
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst / "spectrum_rs", ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def child_env(product: Path) -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(product)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["PYTHONWARNINGS"] = "ignore"
    return env


def check_module(r: Dict[str, Any], product: Path) -> None:
    mod = r["child"]["module"]
    if not mod.startswith(str(product)):
        raise RuntimeError(f"the child imported spectrum_rs from {mod}, not the frozen copy {product}")


def measure(label: str, n: int, fn: Callable[[], Dict[str, Any]]) -> List[Dict[str, Any]]:
    runs = []
    for k in range(n):
        r = fn()
        r["label"] = label
        runs.append(r)
        log(
            f"  {label} #{k + 1}: wall {r['wall_s']:.2f} s, peak RSS {r['maxrss_mib']:.0f} MiB, others {r['foreign_cores']:.2f} cores"
        )
    return runs


def run_deepseek(root: Path, smoke: bool, env: Dict[str, str], product: Path, repeats: int) -> Dict[str, Any]:
    s = deepseek_v3(smoke)
    folder = root / "deepseek-v3"
    fixture = write_checkpoint(
        folder, "deepseek-v3", deepseek_tensors(s), s["shards"], deepseek_config(s), lambda n: f".{DS_TYPE}." in n
    )
    out: Dict[str, Any] = {"shape": s, "fixture": fixture, "runs": {}}
    for kind, extra in (("open", []), ("layers", [DS_TYPE]), ("scan", [DS_TYPE])):
        runs = []
        drop_cache(folder)
        runs += measure(f"{kind} cold", 1, lambda: run_child(kind, env, root, str(folder), *extra))
        runs += measure(f"{kind} warm", repeats, lambda: run_child(kind, env, root, str(folder), *extra))
        for r in runs:
            check_module(r, product)
        out["runs"][kind] = runs
    return out


def run_qwen(root: Path, smoke: bool, env: Dict[str, str], product: Path) -> Dict[str, Any]:
    s = qwen_110b(smoke)
    folder = root / "qwen1.5-110b"
    tensors = qwen_tensors(s)
    real = lambda n: n.endswith((".self_attn.k_proj.weight", ".self_attn.v_proj.weight"))  # noqa: E731
    need = sum(nbytes(d, sh) for n, d, sh in tensors if real(n))
    free = shutil.disk_usage(root).free
    if free < need + (2 << 30):
        raise SystemExit(
            f"{root}: {free / 1e9:.1f} GB free, the Qwen fixture needs {need / 1e9:.1f} GB of real data + 2 GB"
        )
    fixture = write_checkpoint(folder, "qwen1.5-110b", tensors, s["shards"], qwen_config(s), real)
    out: Dict[str, Any] = {"shape": s, "fixture": fixture, "scanned_bytes": need, "disk_free_before": free, "runs": {}}
    runs = measure("layers warm", 1, lambda: run_child("layers", env, root, str(folder), QWEN_TYPES[0]))
    for r in runs:
        check_module(r, product)
    out["runs"]["layers"] = runs
    results = root / "qwen-out"
    cmd = [sys.executable, "-m", "spectrum_rs", "scan", str(folder), "--types", *QWEN_TYPES, "--device", "cpu"]
    cmd += ["--quiet", "--no-resume", "--overwrite", "--out", str(results)]
    out["command"] = "python -m spectrum_rs scan " + " ".join(cmd[4:])
    scans = []
    for label in ("cli scan cold", "cli scan warm"):
        if label.endswith("cold"):
            drop_cache(folder)
        shutil.rmtree(results, ignore_errors=True)
        (r,) = measure(label, 1, lambda: run_process(cmd, env, root))
        files = sorted((results / "model_snr_results").glob("snr_results_*.json"))
        files = [f for f in files if not f.name.endswith("_sorted.json")]
        data = json.loads(files[0].read_text())
        r["scanned_layers"] = len(data)
        r["types"] = sorted({v["type"] for v in data.values()})
        r["stdout"], r["stderr"] = r["stdout"][-500:], r["stderr"][-1000:]
        r["label"] = label
        scans.append(r)
    shutil.rmtree(results, ignore_errors=True)
    out["runs"]["scan"] = scans
    return out


def run_show(root: Path, env: Dict[str, str], product: Path) -> Dict[str, Any]:
    folder = root / "deepseek-v3"
    synth_dir = root / "show"
    shutil.rmtree(synth_dir, ignore_errors=True)
    r = run_child("synth", env, root, str(folder), str(synth_dir))
    check_module(r, product)
    out: Dict[str, Any] = {"synth": r["child"], "synth_wall_s": r["wall_s"]}
    for variant in ("reference-types", "grouped-experts"):
        path = r["child"][variant]["results"]
        p = run_process([sys.executable, "-m", "spectrum_rs", "show", path], env, root)
        lines = p["stdout"].splitlines()
        out[variant] = {
            "layers": r["child"][variant]["layers"],
            "types": r["child"][variant]["types"],
            "lines": len(lines),
            "max_width": max((len(x) for x in lines), default=0),
            "wall_s": p["wall_s"],
            "maxrss_mib": p["maxrss_mib"],
            "foreign_cores": p["foreign_cores"],
            "output": p["stdout"]
            if len(lines) <= 80
            else "\n".join(lines[:30] + [f"... ({len(lines) - 30} more lines)"]),
        }
        log(f"  show {variant}: {len(lines)} lines for {out[variant]['types']} types, {p['wall_s']:.2f} s")
    shutil.rmtree(synth_dir, ignore_errors=True)
    return out


# --------------------------------------------------------------------------- the report


def _fmt_runs(runs: List[Dict[str, Any]], key: str, digits: int = 3) -> str:
    vals = []
    for r in runs:
        v = r["child"][key] if key in r.get("child", {}) else r[key]
        mark = "*" if r["foreign_cores"] > 0.1 else ""
        vals.append(f"{v:.{digits}g}{mark}")
    return ", ".join(vals)


def report(res: Dict[str, Any]) -> str:
    m, v = res["machine"], res["versions"]
    ds, qw, sh = res["deepseek"], res["qwen"], res["show"]
    L: List[str] = [
        f"# Catalogs at scale, {res['started']}",
        "",
        f"Written by `{res['command']}` (every figure below comes from that one run; issue 10, "
        '"Catalogs at scale"). Checkpoints of the real shapes as sparse files: only the tensors '
        "scanned hold data.",
        "",
        "## Machine, versions, load",
        "",
        f"- CPU: {m.get('Model name', '?')}, {m.get('CPU(s)', '?')} CPUs ({m['cpus_usable']} usable), RAM {m['RAM_GiB']} GiB; "
        f"Python {m['python']}, numpy {m['numpy']}; {m['platform']}",
        f"- spectrum-rs {res['spectrum_rs_version']} at {v['git_head']} ({v['git_head_subject']})"
        + (
            f"; the working tree had uncommitted changes in {len(v['uncommitted'])} files under python/ and rust/ "
            "(listed in the .json): what was measured is the "
            f"compiled extension in the tree (built {v['core_built']}, sha256 {v['core_sha256'][:16]}...) and the "
            "Python files as they were, copied at the start"
            if v["uncommitted"]
            else f"; extension sha256 {v['core_sha256'][:16]}... (copied at the start)"
        ),
        f"- Load at start: `{res['uptime_start']}`"
        + (f"; after waiting {res['waited_s']:.0f} s for it: `{res['uptime_after_wait']}`" if "waited_s" in res else "")
        + f"; at end: `{res['uptime_end']}`. The machine is shared; "
        "`*` marks a run during which other processes used more than 0.1 core on average (/proc/stat).",
        f"- Run time {res['run_min']:.1f} min. Cold = the fixture's pages dropped from the page cache first "
        "(`posix_fadvise(DONTNEED)`); warm = right after. Every figure is a fresh process: wall time and peak "
        "RSS (`ru_maxrss` from `wait4`) of the whole process, interpreter start and imports included, and the "
        "in-process time of the call itself.",
        "",
    ]
    f = ds["fixture"]
    s = ds["shape"]
    lay = ds["runs"]["layers"][-1]["child"]
    L += [
        "## DeepSeek-V3-shaped catalog",
        "",
        f"{s['layers']} layers (first {s['dense']} dense, then {s['experts']} routed experts + shared experts + router), "
        f"MLA attention, hidden {s['hidden']}, vocab {s['vocab']}; F8_E4M3 weights with F32 `weight_scale_inv` "
        f"{s['block']}x{s['block']} blocks; {f['tensors']} tensors in {f['shards']} shards, "
        f"{f['apparent_bytes'] / 1e9:.0f} GB apparent, {f['allocated_bytes'] / 1e6:.0f} MB on disk "
        f"(headers {f['header_bytes'] / 1e6:.1f} MB; real data only in the {f['real_tensors']} `{DS_TYPE}` "
        f"weights and scales, {f['real_bytes'] / 1e6:.0f} MB). Written in {f['write_s']} s"
        + (" (reused)." if f.get("reused") else "."),
        "",
        f"The catalog: {lay['layers']} layers (2-D and 1-D), {lay['matrices']} matrices (the scan's default), "
        f'{lay["types"]} types (reference types: one per expert index); `select(["{DS_TYPE}"])`: {lay["selected"]} layers.',
        "",
        "| step (fresh process each) | runs: in-process s | runs: process wall s | peak RSS MiB (best..worst) |",
        "|---|---|---|---|",
    ]
    for kind, key in (("open", "open_s"), ("layers", "layers_s"), ("scan", "scan_s")):
        runs = ds["runs"][kind]
        for temp in ("cold", "warm"):
            rr = [r for r in runs if r["label"].endswith(temp)]
            rss = [r["maxrss_mib"] for r in rr]
            what = {
                "open": "`_core.Catalog([folder])`",
                "layers": "`.layers()` (after an open)",
                "scan": f'`scan(folder, types=["{DS_TYPE}"], device="cpu")`',
            }[kind]
            L.append(
                f"| {what}, {temp} | {_fmt_runs(rr, key)} | {_fmt_runs(rr, 'wall_s')} | {min(rss):.0f}..{max(rss):.0f} |"
            )
    sc = ds["runs"]["scan"][-1]["child"]
    op = ds["runs"]["open"][-1]["child"]
    L += [
        "",
        f"- `import spectrum_rs` takes {op['import_s']:.2f} s of the process wall ({op['rss_after_import_mib']:.0f} MiB "
        f"RSS after it). The scan found {sc['scanned']} layers ({sc['snr_finite']} finite SNRs) on `{sc['device']}`.",
        "",
    ]
    f, s = qw["fixture"], qw["shape"]
    lay = qw["runs"]["layers"][0]
    L += [
        "## Qwen1.5-110B-shaped checkpoint",
        "",
        f"{s['layers']} layers, hidden {s['hidden']}, intermediate {s['inter']}, {s['heads']} heads / {s['kv_heads']} KV "
        f"heads, vocab {s['vocab']}, bf16, untied head: {f['tensors']} tensors in {f['shards']} shards, "
        f"{f['apparent_bytes'] / 1e9:.1f} GB apparent, {f['allocated_bytes'] / 1e9:.2f} GB on disk (real data only in "
        f"the {f['real_tensors']} `k_proj`/`v_proj` weights, {f['real_bytes'] / 1e9:.2f} GB). Written in {f['write_s']} s"
        + (" (reused)." if f.get("reused") else ".")
        + f" Catalog: {lay['child']['layers']} layers, open {lay['child']['open_s'] * 1e3:.0f} ms, "
        f"`.layers()` {lay['child']['layers_s'] * 1e3:.1f} ms, process peak RSS {lay['maxrss_mib']:.0f} MiB.",
        "",
        f"Command: `{qw['command']}`",
        "",
        "| run | process wall s | CPU s | peak RSS MiB | read from disk (`ru_inblock`) | major faults | layers in the result | others' CPU |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in qw["runs"]["scan"]:
        L.append(
            f"| {r['label']} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['maxrss_mib']:.0f} | {r['inblock_bytes'] / 1e9:.2f} GB | "
            f"{r['majflt']} | {r['scanned_layers']} ({', '.join(r['types'])}) | {r['foreign_cores']:.2f} cores |"
        )
    L += [
        "",
        f"The scanned matrices hold {qw['scanned_bytes'] / 1e9:.2f} GB of the checkpoint's {f['apparent_bytes'] / 1e9:.0f} GB; "
        "the cold run's disk reads say what the scan read.",
        "",
        f"## `show` on a {sh['reference-types']['layers']:,}-layer result",
        "",
        "Every matrix of the DeepSeek-V3-shaped catalog with synthetic SNRs (log-normal), saved by `ScanResult.save`, "
        "then `python -m spectrum_rs show <results.json>` (default: a summary per type above 300 layers). "
        "Grouped: the expert index of a type replaced by `*` by the bench (the `group_experts` rule of "
        "rust/layout/kinds.rs), as a `--group-experts` scan would write the types.",
        "",
        "| variant | layers | types | output lines | widest line | wall s | peak RSS MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for variant in ("reference-types", "grouped-experts"):
        x = sh[variant]
        L.append(
            f"| {variant} | {x['layers']} | {x['types']} | {x['lines']} | {x['max_width']} | {x['wall_s']:.2f} | {x['maxrss_mib']:.0f} |"
        )
    for variant in ("grouped-experts", "reference-types"):
        L += ["", f"`show` output, {variant}:", "", "```", sh[variant]["output"].rstrip("\n"), "```"]
    L += [""]
    return "\n".join(L)


def wait_load(limit: float, most: float) -> float:
    """Waits (at most ``most`` s) for the 1-minute load average to drop below ``limit``."""
    t0 = time.perf_counter()
    while os.getloadavg()[0] >= limit and time.perf_counter() - t0 < most:
        time.sleep(10)
    waited = time.perf_counter() - t0
    log(f"waited {waited:.0f} s for the load: {uptime()}")
    return waited


def main_run(args: argparse.Namespace) -> int:
    root: Path = args.root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    t0 = time.perf_counter()
    res: Dict[str, Any] = {
        "started": started,
        "command": "python benches/bench_catalog.py " + " ".join(args.argv),
        "uptime_start": uptime(),
        "loadavg_start": os.getloadavg(),
        "machine": machine_info(),
        "smoke": args.smoke,
    }
    product = freeze_product(root)
    res["versions"] = versions(product)
    env = child_env(product)
    ver = subprocess.run(
        [sys.executable, "-c", "import spectrum_rs; print(spectrum_rs.__version__, spectrum_rs.__file__)"],
        capture_output=True, text=True, env=env, cwd=str(root),
    ).stdout.split()  # fmt: skip
    res["spectrum_rs_version"] = ver[0]
    log(f"spectrum-rs {ver[0]} from {ver[1]}; {res['uptime_start']}")
    if args.wait_load is not None:
        res["waited_s"] = wait_load(args.wait_load, args.wait_max)
        res["uptime_after_wait"] = uptime()
    try:
        log("DeepSeek-V3-shaped catalog")
        res["deepseek"] = run_deepseek(root, args.smoke, env, product, args.repeats)
        log("show on the whole DeepSeek-V3-shaped result")
        res["show"] = run_show(root, env, product)
        if not args.keep:
            shutil.rmtree(root / "deepseek-v3")
        log("Qwen1.5-110B-shaped checkpoint")
        res["qwen"] = run_qwen(root, args.smoke, env, product)
    finally:
        if not args.keep:
            for name in ("deepseek-v3", "qwen1.5-110b", "qwen-out", "show", "product"):
                shutil.rmtree(root / name, ignore_errors=True)
            if not args.smoke and root == DEFAULT_ROOT and not any(root.iterdir()):
                root.rmdir()
    res["uptime_end"] = uptime()
    res["loadavg_end"] = os.getloadavg()
    res["run_min"] = (time.perf_counter() - t0) / 60
    out_dir = (root / "results") if args.smoke else args.out
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"catalog-{args.date or started[:10]}"
    (out_dir / f"{stem}.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    (out_dir / f"{stem}.md").write_text(report(res))
    log(f"wrote {out_dir / stem}.md and .json")
    print(report(res))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT, help=f"where the fixtures go (default {DEFAULT_ROOT})")
    ap.add_argument("--keep", action="store_true", help="keep the fixtures (and reuse them on the next run)")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, to check the script (results under --root)")
    ap.add_argument("--repeats", type=int, default=3, help="warm runs of each DeepSeek step (default 3)")
    ap.add_argument(
        "--out", type=Path, default=HERE / "results", help="folder for the results (default benches/results)"
    )
    ap.add_argument("--date", default=None, help="date in the results' file name (default today)")
    ap.add_argument("--wait-load", type=float, default=None, help="first wait until the 1-minute load is below this")
    ap.add_argument("--wait-max", type=float, default=600, help="... for at most this many seconds (default 600)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = ap.parse_args(argv)
    args.argv = argv
    if args.child:
        r = child(args.child, Path(args.rest[0]), args.rest[1:])
        print(RESULT_TAG + json.dumps(r), flush=True)
        return 0
    return main_run(args)


if __name__ == "__main__":
    sys.exit(main())
