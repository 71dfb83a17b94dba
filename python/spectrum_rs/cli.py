"""The ``spectrum-rs`` command line: ``scan`` a model (never prompts, resumes after an
interruption), ``select`` layers from an existing results file, ``show`` it as a table,
``plot`` it as a heatmap. Exit codes: 0 success, 1 scan or file error, 2 usage error,
130 interrupted."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import List, Optional

from . import __version__
from ._core import SpectrumError


def _percent(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"must be between 0 and 100, got {text}")
    return value


def _positive_mb(text: str) -> int:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return int(value * (1 << 20))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="spectrum-rs", description="Spectrum layer selection (SNR of every "
                                "weight matrix) for safetensors models, streamed with a Rust core.")
    p.add_argument("--version", action="version", version=f"spectrum-rs {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("scan", help="scan a model and write the result files")
    s.add_argument("model", help="model folder, .safetensors file, index file, or Hugging Face model id")
    s.add_argument("--top-percent", type=_percent, default=25.0, help="share of each type to select (default 25)")
    s.add_argument("--types", nargs="+", default=None, metavar="TYPE",
                   help="layer types, names or globs to scan (default: every matrix)")
    s.add_argument("--exclude", nargs="+", default=None, metavar="TYPE", help="types, names or globs to skip")
    s.add_argument("--include-1d", action="store_true", help="also report 1-D tensors (norms), as the reference does")
    s.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1, ...")
    s.add_argument("--method", choices=["gram", "svd"], default="gram", help="singular values from the Gram "
                   "matrix (default) or a full SVD")
    s.add_argument("--dtype", choices=["auto", "float32", "float64"], default="auto",
                   help="precision of the Gram matrix: auto (default: float32, float64 where the spectrum "
                        "needs it), float32 or float64")
    s.add_argument("--no-noise", choices=["one", "inf"], default="one",
                   help="SNR when nothing is below the threshold: 'one' (current reference) or 'inf' (older)")
    s.add_argument("--out", default=".", help="folder for model_snr_results/ (default: current folder)")
    s.add_argument("--name", default=None, help="model name in the result file names (default: MODEL as given)")
    s.add_argument("--window-mb", type=_positive_mb, default=128, dest="window_bytes",
                   help="host memory for layers read ahead, in MB (default 128)")
    s.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="continue an interrupted scan from its checkpoint (default: on)")
    s.add_argument("--download", action=argparse.BooleanOptionalAction, default=True,
                   help="download a model id missing from the Hugging Face cache (default: on)")
    s.add_argument("--no-embeddings", dest="embeddings", action="store_false",
                   help="leave the embedding and head lines out of the YAML")
    s.add_argument("--strict-yaml", action="store_true", help="write escaped, anchored regexes in the YAML")
    s.add_argument("--quiet", "-q", action="store_true", help="no progress and no summary")

    sel = sub.add_parser("select", help="select layers from an existing results file")
    sel.add_argument("results", help="a results JSON (ours or the reference tool's, either shape)")
    sel.add_argument("--top-percent", type=_percent, default=25.0)
    sel.add_argument("--format", choices=["yaml", "json", "peft", "names"], default="yaml",
                     help="yaml: unfrozen_parameters; json: {type: [layers]}; peft: {target_modules: [...]}; "
                          "names: one layer per line")
    sel.add_argument("--no-embeddings", dest="embeddings", action="store_false")
    sel.add_argument("--strict-yaml", action="store_true")
    sel.add_argument("-o", "--output", default=None, help="write here instead of standard output")

    sh = sub.add_parser("show", help="print a results file as a table per type")
    sh.add_argument("results")
    sh.add_argument("--top-percent", type=_percent, default=25.0)

    pl = sub.add_parser("plot", help="draw an SNR heatmap (layer index x type)")
    pl.add_argument("results")
    pl.add_argument("-o", "--output", required=True, help="PNG file to write")
    pl.add_argument("--top-percent", type=_percent, default=25.0)
    return p


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
    from . import distributed
    from .result_files import RESULTS_DIR, slug
    from .scan import scan

    rank_world = distributed.init_from_env()  # under torchrun: one share of the layers per rank
    lead = rank_world is None or rank_world[0] == 0
    name = args.name or args.model
    checkpoint = Path(args.out) / RESULTS_DIR / f"snr_results_{slug(name)}.checkpoint.jsonl"
    if not args.resume:
        # Each process removes its own checkpoint only: another rank may be writing its own.
        own = checkpoint if rank_world is None else \
            checkpoint.with_name(f"{checkpoint.name}.rank{rank_world[0]}-of-{rank_world[1]}")
        own.unlink(missing_ok=True)
    start = time.perf_counter()
    try:
        result = scan(args.model, types=args.types, exclude=args.exclude, include_1d=args.include_1d,
                      top_percent=args.top_percent, device=args.device, method=args.method, dtype=args.dtype,
                      no_noise=args.no_noise, window_bytes=args.window_bytes, name=name,
                      progress=not args.quiet, checkpoint=checkpoint, download=args.download,
                      distributed_scan=rank_world is not None)
    except KeyboardInterrupt:
        done = _checkpoint_layers(checkpoint)
        print(f"spectrum-rs: interrupted; {done} finished layers are kept in {checkpoint}. "
              f"Run the same command again to resume.", file=sys.stderr)
        return 130
    st = result.settings
    paths = {}
    if lead:
        paths = result.save(args.out, args.top_percent, name=name, embeddings=args.embeddings,
                            strict=args.strict_yaml)
    if rank_world is not None:
        import torch.distributed as dist

        dist.barrier()  # every rank's checkpoint stays until the files are written
        dist.destroy_process_group()  # a group left up can abort the process at exit
    if st.get("checkpoint"):
        Path(st["checkpoint"]).unlink(missing_ok=True)
    if not lead:
        return 0
    procs = f" in {st['processes']} processes" if st["processes"] > 1 else ""
    _say(args.quiet, f"spectrum-rs: scanned {len(result)} layers ({st['resumed_layers']} from the checkpoint) "
                     f"in {time.perf_counter() - start:.1f} s on {st['device']}{procs} "
                     f"(method {st['method']}, {st['dtype']}); peak memory {_peak_rss_bytes() / 2**30:.2f} GiB")
    for p in paths.values():
        _say(args.quiet, f"  wrote {p}")
    return 0


def _checkpoint_layers(path: Path) -> int:
    try:
        return max(0, sum(1 for line in path.read_text().splitlines() if line.strip()) - 1)
    except OSError:
        return 0


def _emit(text: str, output: Optional[str]) -> None:
    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        from .result_files import atomic_write

        atomic_write(output, text)


def cmd_select(args: argparse.Namespace) -> int:
    from .result_files import unfrozen_yaml
    from .results import ScanResult

    result = ScanResult.load(args.results)
    if args.format == "yaml":
        text = unfrozen_yaml(result, args.top_percent, embeddings=args.embeddings, strict=args.strict_yaml)
    elif args.format == "json":
        text = json.dumps(result.selected_by_type(args.top_percent), indent=4) + "\n"
    elif args.format == "peft":
        text = json.dumps({"target_modules": result.select(args.top_percent)}, indent=4) + "\n"
    else:
        text = "".join(n + "\n" for n in result.select(args.top_percent))
    _emit(text, args.output)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from .results import ScanResult

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
    from .plot import plot_snr
    from .results import ScanResult

    path = plot_snr(ScanResult.load(args.results), args.output, args.top_percent)
    print(f"wrote {path}", file=sys.stderr)
    return 0


COMMANDS = {"scan": cmd_scan, "select": cmd_select, "show": cmd_show, "plot": cmd_plot}


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("spectrum-rs: interrupted", file=sys.stderr)
        return 130
    except (SpectrumError, ValueError, OSError) as e:
        if args.debug:
            raise
        print(f"spectrum-rs: error: {e}", file=sys.stderr)
        return 1
