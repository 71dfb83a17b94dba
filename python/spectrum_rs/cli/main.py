"""The ``spectrum-rs`` command line: its argument parser and ``main()``, which runs a command
(:mod:`.commands`) and turns errors into one line and an exit code: 0 success, 1 scan or
file error, 2 usage error, 130 interrupted."""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from .._core import __version__
from ..errors import InternalError, SpectrumError
from ..options import DTYPES, GROUP_BY, METHODS, NO_NOISE, check_top_percent
from .commands import COMMANDS


def _percent(text: str) -> float:
    try:
        return check_top_percent(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _positive_mb(text: str) -> int:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return int(value * (1 << 20))


def build_parser() -> argparse.ArgumentParser:
    # --debug is accepted before or after the command (`spectrum-rs scan X --debug`).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors")
    p = argparse.ArgumentParser(
        prog="spectrum-rs",
        description="Spectrum layer selection (SNR of every weight matrix) for safetensors models, "
        "streamed with a Rust core.",
    )
    p.add_argument("--version", action="version", version=f"spectrum-rs {__version__}")
    p.add_argument("--debug", action="store_true", default=False, help="show tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    pct_help = "share of each layer type to select, in percent (default 25; 0.5 means half a percent, not half)"

    s = sub.add_parser("scan", parents=[common], help="scan a model and write the result files")
    s.add_argument("model", help="model folder, .safetensors file, index file, or Hugging Face model id")
    s.add_argument("--top-percent", type=_percent, default=25.0, metavar="P", help=pct_help)
    s.add_argument(
        "--types",
        nargs="+",
        default=None,
        metavar="TYPE",
        help="layer types, names or globs to scan (default: every matrix)",
    )
    s.add_argument("--exclude", nargs="+", default=None, metavar="TYPE", help="types, names or globs to skip")
    s.add_argument("--include-1d", action="store_true", help="also report 1-D tensors (norms), as the reference does")
    s.add_argument(
        "--group-experts",
        action="store_true",
        help="one type for all experts of a projection (mlp.experts.*.down_proj), so experts are ranked "
        "against each other (default: one type per expert number, as the reference)",
    )
    s.add_argument(
        "--group-by",
        choices=GROUP_BY,
        default="type",
        help="type (default, the reference's types) or stack: keep the stacks of a multimodal or "
        "encoder-decoder model (vision tower, language model) in different types",
    )
    s.add_argument(
        "--split-fused",
        action="store_true",
        help="scan the halves of a fused gate_up_proj and the q/k/v of a fused attention matrix as layers of "
        "their own (docs/layouts.md says how each family fuses them)",
    )
    s.add_argument(
        "--max-experts",
        type=int,
        default=None,
        metavar="N",
        help="most layers one stacked-experts tensor may become (default 65536)",
    )
    s.add_argument(
        "--max-layers", type=int, default=None, metavar="N", help="most layers a model may have (default 4000000)"
    )
    s.add_argument("--device", default="auto", help="auto (default), cpu, cuda (every GPU) or cuda:N")
    s.add_argument(
        "--method", choices=METHODS, default="gram", help="singular values from the Gram matrix (default) or a full SVD"
    )
    s.add_argument(
        "--dtype",
        choices=DTYPES,
        default="auto",
        help="precision of the Gram matrix: auto (default: float32, float64 where the spectrum needs it), "
        "float32 or float64",
    )
    s.add_argument(
        "--no-noise",
        choices=NO_NOISE,
        default="one",
        help="SNR when nothing is below the threshold: 'one' (current reference) or 'inf' (older)",
    )
    s.add_argument("--out", default=".", metavar="DIR", help="folder for model_snr_results/ (default: current folder)")
    s.add_argument(
        "--name",
        default=None,
        help="model name in the result file names (default: a Hub id as given; for a folder, the Hub id in its "
        "config.json, else the folder's name). Axolotl looks for the name it trains with.",
    )
    s.add_argument(
        "--window-mb",
        type=_positive_mb,
        default="128",  # a string: argparse converts string defaults only (128 was 128 bytes)
        dest="window_bytes",
        metavar="MIB",
        help="host memory for layers read ahead, in MiB (default 128)",
    )
    s.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="continue an interrupted scan from its checkpoint (default: on)",
    )
    s.add_argument(
        "--download",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="download a model id missing from the Hugging Face cache (default: on)",
    )
    s.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a results file that holds layers this scan does not (a scan restricted by --types "
        "or --exclude otherwise refuses to)",
    )
    s.add_argument(
        "--no-embeddings",
        dest="embeddings",
        action="store_false",
        help="leave the embedding and head lines out of the YAML",
    )
    s.add_argument("--strict-yaml", action="store_true", help="write escaped, anchored regexes in the YAML")
    s.add_argument(
        "--quiet", "-q", action="store_true", help="no progress bar and no summary: only the line naming the files"
    )

    sel = sub.add_parser("select", parents=[common], help="select layers from an existing results file")
    sel.add_argument("results", help="a results JSON (ours or the reference tool's, either shape)")
    sel.add_argument("--top-percent", type=_percent, default=25.0, metavar="P", help=pct_help)
    sel.add_argument(
        "--format",
        choices=["yaml", "json", "peft", "names"],
        default="yaml",
        help="yaml: unfrozen_parameters; json: {type: [layers]}; peft: {target_modules: [...]}; "
        "names: one layer per line",
    )
    sel.add_argument(
        "--no-embeddings",
        dest="embeddings",
        action="store_false",
        help="leave the embedding and head lines out of the YAML",
    )
    sel.add_argument("--strict-yaml", action="store_true", help="write escaped, anchored regexes in the YAML")
    sel.add_argument("-o", "--output", default=None, metavar="FILE", help="write here instead of standard output")

    sh = sub.add_parser("show", parents=[common], help="print a results file as a table per type")
    sh.add_argument("results", help="a results JSON (ours or the reference tool's, either shape)")
    sh.add_argument("--top-percent", type=_percent, default=25.0, metavar="P", help=pct_help)
    sh.add_argument(
        "--no-embeddings",
        dest="embeddings",
        action="store_false",
        help="do not count embedding and head layers as trained (as the YAML with --no-embeddings)",
    )
    view = sh.add_mutually_exclusive_group()
    view.add_argument(
        "--full", dest="summary", action="store_false", default=None, help="list every layer (default up to 300 layers)"
    )
    view.add_argument(
        "--summary", dest="summary", action="store_true", help="one line per type (default above 300 layers)"
    )

    pl = sub.add_parser("plot", parents=[common], help="draw an SNR heatmap (layer index x type)")
    pl.add_argument("results", help="a results JSON (ours or the reference tool's, either shape)")
    pl.add_argument("-o", "--output", required=True, metavar="PNG", help="PNG file to write")
    pl.add_argument("--top-percent", type=_percent, default=25.0, metavar="P", help=pct_help)

    pn = sub.add_parser(
        "plan",
        parents=[common],
        help="predict a scan's time and peak memory from the headers alone (no weights read)",
        description="What `scan MODEL` will cost, from the safetensors headers alone: layers, bytes, the work "
        "of each layer's singular values, the predicted wall time on this machine (a short calibration of its "
        "kernels, cached) and the predicted peak host memory. No weight byte is read; a model id is read "
        "from the local Hugging Face cache only.",
    )
    pn.add_argument("model", help="model folder, .safetensors file, index file, or a Hugging Face id in the cache")
    pn.add_argument("--types", nargs="+", default=None, metavar="TYPE", help="as for scan (default: every matrix)")
    pn.add_argument("--exclude", nargs="+", default=None, metavar="TYPE", help="as for scan")
    pn.add_argument("--include-1d", action="store_true", help="as for scan: also 1-D tensors (norms)")
    pn.add_argument("--group-experts", action="store_true", help="as for scan")
    pn.add_argument("--group-by", choices=GROUP_BY, default="type", help="as for scan")
    pn.add_argument("--split-fused", action="store_true", help="as for scan")
    pn.add_argument("--max-experts", type=int, default=None, metavar="N", help="as for scan")
    pn.add_argument("--max-layers", type=int, default=None, metavar="N", help="as for scan")
    pn.add_argument(
        "--device",
        nargs="+",
        default=["auto"],
        metavar="DEVICE",
        help="auto (default), cpu, cuda (every GPU), cuda:N, or several (cuda:0 cuda:1); a GPU that is not "
        "here is planned with an uncalibrated rough model",
    )
    pn.add_argument(
        "--window-mb",
        type=_positive_mb,
        default="128",
        dest="window_bytes",
        metavar="MIB",
        help="the scan's read-ahead window, in MiB (default 128)",
    )
    pn.add_argument(
        "--read-mib-s",
        type=float,
        default=None,
        metavar="MIB_S",
        help="disk read rate for model bytes not in the page cache (default: 1024 MiB/s assumed, and said so)",
    )
    pn.add_argument("--recalibrate", action="store_true", help="measure this machine's kernels again")
    pn.add_argument("--json", action="store_true", help="print the plan as JSON (schema: spectrum_rs.run.plan.plan)")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # for messages that repeat the command (how to resume)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("spectrum-rs: interrupted", file=sys.stderr)
        return 130
    except (SpectrumError, ValueError, OSError) as e:
        if args.debug:
            raise
        print(f"spectrum-rs: error: {e} (--debug shows the traceback)", file=sys.stderr)
        return 1
    except InternalError as e:
        if args.debug:
            raise
        print(f"spectrum-rs: internal error: {e} (a bug: rerun with --debug and report the traceback)", file=sys.stderr)
        return 1
