"""The commands of the ``spectrum-rs`` command line: ``scan`` a model (never prompts, resumes
after an interruption), ``select`` layers from an existing results file, ``show`` it as a
table, ``plot`` it as a heatmap. Each takes the parsed arguments and returns an exit code."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Set

from ..errors import SpectrumError


def _say(quiet: bool, text: str) -> None:
    if not quiet:
        print(text, file=sys.stderr, flush=True)


def _peak_rss_bytes() -> int:
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    except (ImportError, OSError):
        return 0


def cmd_scan(args: argparse.Namespace) -> int:
    from ..model.source import default_name, resolve_model
    from ..run import distributed
    from ..run.checkpoint import checkpoint_path, finished_layers, rank_path
    from ..scan import scan

    rank_world = distributed.init_from_env()  # under torchrun: one share of the layers per rank
    lead = rank_world is None or rank_world[0] == 0
    path = resolve_model(args.model, download=args.download)
    name = args.name or default_name(args.model)
    if args.name is None and lead and name != args.model:
        _say(args.quiet, f"spectrum-rs: result files are named for {name!r} (--name to choose another)")
    existing = _results_file(args.out, name, args.top_percent)
    checkpoint = checkpoint_path(args.out, name)
    own = checkpoint if rank_world is None else rank_path(checkpoint, *rank_world)
    if not args.resume:
        # Each process removes its own checkpoint only: another rank may be writing its own.
        own.unlink(missing_ok=True)
    start = time.perf_counter()
    try:
        result = scan(
            str(path),
            types=args.types,
            exclude=args.exclude,
            **_layer_options(args),
            top_percent=args.top_percent,
            device=args.device,
            method=args.method,
            dtype=args.dtype,
            no_noise=args.no_noise,
            window_bytes=args.window_bytes,
            name=name,
            progress=not args.quiet,
            checkpoint=checkpoint,
            download=args.download,
            distributed_scan=rank_world is not None,
        )
    except KeyboardInterrupt:
        again = ["spectrum-rs", *(a for a in args.argv if a not in ("--no-resume", "--resume"))]
        print(
            f"spectrum-rs: interrupted; {finished_layers(own)} finished layers are kept in {own}. "
            f"To resume: {shlex.join(again)}",
            file=sys.stderr,
        )
        # The matrix in flight is still being computed in a worker thread (LAPACK cannot be
        # stopped): exit now, without the interpreter's teardown, which that thread could
        # crash (SIGSEGV at exit, seen about once in five). Everything finished is fsynced.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    st = result.settings
    paths = {}
    if lead:
        if existing.exists() and not args.overwrite:
            _refuse_to_drop_layers(existing, {layer.name for layer in result})  # before the checkpoint goes
        paths = result.save(args.out, args.top_percent, name=name, embeddings=args.embeddings, strict=args.strict_yaml)
    if rank_world is not None:
        distributed.finish()  # every rank's checkpoint stays until the files are written
    if st.get("checkpoint"):
        Path(st["checkpoint"]).unlink(missing_ok=True)
    if not lead:
        return 0
    if args.quiet:
        print(f"spectrum-rs: wrote {paths['results']} and its _sorted.json and .yaml", file=sys.stderr, flush=True)
        return 0
    procs = f" in {st['processes']} processes" if st["processes"] > 1 else ""
    _say(
        args.quiet,
        f"spectrum-rs: scanned {len(result)} layers ({st['resumed_layers']} from the checkpoint) "
        f"in {time.perf_counter() - start:.1f} s on {st['device']}{procs} "
        f"(method {st['method']}, {st['dtype']}); peak memory {_peak_rss_bytes() / 2**30:.2f} GiB",
    )
    for p in paths.values():
        _say(args.quiet, f"  wrote {p}")
    return 0


def _layer_options(args: argparse.Namespace) -> Dict[str, Any]:
    """The options that decide which tensors are layers and of which type, as ``scan``
    and ``plan`` take them: both must see the same layers."""
    return {
        "include_1d": args.include_1d,
        "group_experts": args.group_experts,
        "group_by": args.group_by,
        "split_fused": args.split_fused,
        "max_experts": args.max_experts,
        "max_layers": args.max_layers,
    }


def _results_file(out: str, name: str, top_percent: float) -> Path:
    from ..io.reference_files import RESULTS_DIR, file_names

    return Path(out) / RESULTS_DIR / file_names(name, top_percent)["results"]


def _refuse_to_drop_layers(existing: Path, scanned: Set[str]) -> None:
    """A finished result is never lost silently: refuses to replace a results file that
    holds layers this scan does not."""
    from ..results import ScanResult

    try:
        before = {layer.name for layer in ScanResult.load(existing)}
    except SpectrumError:
        return  # not a results file we can read: it holds nothing to keep
    dropped = sorted(before - scanned)
    if dropped:
        raise SpectrumError(
            f"{existing} holds {len(dropped)} layers this scan does not ({', '.join(dropped[:3])}"
            f"{', ...' if len(dropped) > 3 else ''}); refusing to replace it. This scan is kept in its "
            f"checkpoint: rerun the same command with --overwrite to write it at once, or with another --out "
            f"or --name",
            path=str(existing),
        )


def _emit(text: str, output: Optional[str]) -> None:
    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        from ..io.reference_files import atomic_write

        atomic_write(output, text)


def cmd_select(args: argparse.Namespace) -> int:
    from ..results import ScanResult

    result = ScanResult.load(args.results)
    if args.format == "yaml":
        text = result.unfrozen_yaml(args.top_percent, embeddings=args.embeddings, strict=args.strict_yaml)
    elif args.format == "json":
        text = json.dumps(result.selected_by_type(args.top_percent), indent=4) + "\n"
    elif args.format == "peft":
        text = json.dumps({"target_modules": result.select(args.top_percent)}, indent=4) + "\n"
    else:
        text = "".join(n + "\n" for n in result.select(args.top_percent))
    _emit(text, args.output)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from ..io.text import printable
    from ..results import ScanResult

    result = ScanResult.load(args.results)
    chosen = set(result.select(args.top_percent))
    # What the YAML unfreezes whatever the SNR (unless --no-embeddings): show says the same.
    always = set(result.embedding_layers()) if args.embeddings else set()
    ranked = result.ranked()
    if args.summary or (args.summary is None and len(result) > SHOW_FULL_UP_TO):
        sys.stdout.write(_summary(result, ranked, chosen, always, args.top_percent))
        return 0
    width = max((len(printable(layer.name)) for layer in result), default=5)
    out = []
    for t, layers in ranked.items():
        k = sum(1 for layer in layers if layer.name in chosen)
        fixed = sum(1 for layer in layers if layer.name in always and layer.name not in chosen)
        note = f"; {fixed} more trained as embedding/head" if fixed else ""
        out.append(f"{printable(t)}  ({k} of {len(layers)} selected at {args.top_percent:g}%{note})")
        out.append(f"  {'rank':>4}  {'layer':<{width}}  {'snr':>12}  trained")
        for rank, layer in enumerate(layers, 1):
            mark = "yes" if layer.name in chosen else "yes (embedding/head)" if layer.name in always else ""
            out.append(f"  {rank:>4}  {printable(layer.name):<{width}}  {layer.snr:>12.6g}  {mark}")
        out.append("")
    sys.stdout.write("\n".join(out))
    return 0


#: ``show`` prints every layer up to this many; a larger result is summarised per type.
SHOW_FULL_UP_TO = 300


def _summary(result: Any, ranked: Dict[str, List[Any]], chosen: Set[str], always: Set[str], pct: float) -> str:
    """One line per type, and one line per family of types that differ only by an expert
    number (``mlp.experts.7.down_proj`` -> ``mlp.experts.*.down_proj``, 256 types of a
    MoE model): layers, how many train, the SNR range and the best layer. A 45,000-layer
    DeepSeek-V3 result fits a screen."""
    import math
    import re
    import statistics

    from ..io.text import printable

    families: Dict[str, List[str]] = {}
    for t in ranked:
        families.setdefault(printable(re.sub(r"(^|\.)\d+(?=\.|$)", r"\1*", t)), []).append(t)
    width = min(max((len(f) for f in families), default=4), 48)
    out = [
        f"{result.model_name}: {len(result)} layers in {len(ranked)} types; top {pct:g}% of each type trains "
        f"(--full lists every layer)",
        f"  {'type':<{width}}  {'types':>5}  {'layers':>6}  {'trained':>7}  {'snr min':>9}  {'median':>9}  "
        f"{'max':>9}  best",
    ]
    for family, members in families.items():
        layers = [layer for t in members for layer in ranked[t]]
        snrs = [float(layer.snr) for layer in layers if not math.isnan(float(layer.snr))]
        k = sum(1 for layer in layers if layer.name in chosen or layer.name in always)
        lo, mid, hi = (min(snrs), statistics.median(snrs), max(snrs)) if snrs else (math.nan,) * 3
        top = max(layers, key=lambda layer: -math.inf if math.isnan(float(layer.snr)) else float(layer.snr))
        label = family if len(family) <= width else "..." + family[-(width - 3) :]
        out.append(
            f"  {label:<{width}}  {len(members):>5}  {len(layers):>6}  {k:>7}  {lo:>9.4g}  {mid:>9.4g}  "
            f"{hi:>9.4g}  {printable(top.name)}"
        )
    return "\n".join(out) + "\n"


def cmd_plot(args: argparse.Namespace) -> int:
    from ..plot import plot_snr
    from ..results import ScanResult

    path = plot_snr(ScanResult.load(args.results), args.output, args.top_percent)
    print(f"wrote {path}", file=sys.stderr)
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from ..run.plan import format_plan, plan

    device = args.device[0] if len(args.device) == 1 else args.device
    result = plan(
        args.model,
        device=device,
        types=args.types,
        exclude=args.exclude,
        **_layer_options(args),
        window_bytes=args.window_bytes,
        read_bytes_per_s=args.read_mib_s * (1 << 20) if args.read_mib_s else None,
        recalibrate=args.recalibrate,
        on_calibrate=lambda text: print(f"spectrum-rs: {text}", file=sys.stderr, flush=True),
    )
    if args.json:
        sys.stdout.write(json.dumps(result, indent=1) + "\n")
    else:
        sys.stdout.write(format_plan(result))
    return 0


COMMANDS: Dict[str, Callable[[argparse.Namespace], int]] = {
    "scan": cmd_scan,
    "select": cmd_select,
    "show": cmd_show,
    "plot": cmd_plot,
    "plan": cmd_plan,
}
