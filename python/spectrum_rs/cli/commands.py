"""The commands of the ``spectrum-rs`` command line: ``scan`` a model (never prompts, resumes
after an interruption), ``select`` layers from an existing results file, ``show`` it as a
table, ``plot`` it as a heatmap. Each takes the parsed arguments and returns an exit code."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable, Dict, Optional


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
    from ..run import distributed
    from ..run.checkpoint import checkpoint_path, finished_layers, rank_path
    from ..scan import scan

    rank_world = distributed.init_from_env()  # under torchrun: one share of the layers per rank
    lead = rank_world is None or rank_world[0] == 0
    name = args.name or args.model
    checkpoint = checkpoint_path(args.out, name)
    own = checkpoint if rank_world is None else rank_path(checkpoint, *rank_world)
    if not args.resume:
        # Each process removes its own checkpoint only: another rank may be writing its own.
        own.unlink(missing_ok=True)
    start = time.perf_counter()
    try:
        result = scan(
            args.model,
            types=args.types,
            exclude=args.exclude,
            include_1d=args.include_1d,
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
        print(
            f"spectrum-rs: interrupted; {finished_layers(own)} finished layers are kept in {own}. "
            f"Run the same command again to resume.",
            file=sys.stderr,
        )
        return 130
    st = result.settings
    paths = {}
    if lead:
        paths = result.save(args.out, args.top_percent, name=name, embeddings=args.embeddings, strict=args.strict_yaml)
    if rank_world is not None:
        distributed.finish()  # every rank's checkpoint stays until the files are written
    if st.get("checkpoint"):
        Path(st["checkpoint"]).unlink(missing_ok=True)
    if not lead:
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
    from ..results import ScanResult

    result = ScanResult.load(args.results)
    chosen = set(result.select(args.top_percent))
    width = max((len(layer.name) for layer in result), default=5)
    out = []
    for t, layers in result.ranked().items():
        k = sum(1 for layer in layers if layer.name in chosen)
        out.append(f"{t}  ({k} of {len(layers)} selected at {args.top_percent:g}%)")
        out.append(f"  {'rank':>4}  {'layer':<{width}}  {'snr':>12}  selected")
        for rank, layer in enumerate(layers, 1):
            mark = "yes" if layer.name in chosen else ""
            out.append(f"  {rank:>4}  {layer.name:<{width}}  {layer.snr:>12.6g}  {mark}")
        out.append("")
    sys.stdout.write("\n".join(out))
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from ..plot import plot_snr
    from ..results import ScanResult

    path = plot_snr(ScanResult.load(args.results), args.output, args.top_percent)
    print(f"wrote {path}", file=sys.stderr)
    return 0


COMMANDS: Dict[str, Callable[[argparse.Namespace], int]] = {
    "scan": cmd_scan,
    "select": cmd_select,
    "show": cmd_show,
    "plot": cmd_plot,
}
