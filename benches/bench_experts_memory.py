"""Host memory of a scan of one fused ``[E, out, in]`` experts tensor (issue 10: "streamed
slice by slice, never the whole tensor in host memory at once: measure it"). Writes a
256 MiB float32 tensor of 32 experts of 1024 x 2048 with the ``safetensors`` package, then
scans it in fresh processes at two read-ahead windows and prints each peak RSS next to the
tensor's size and the process's RSS after ``import spectrum_rs``.

    python benches/bench_experts_memory.py [--root /tmp/spectrum-rs-experts]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np

# VmHWM, not ru_maxrss: a child's ru_maxrss can include the parent's memory at fork time.
HWM = "int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]) / 1024"
PEAK = (
    "import sys, time, spectrum_rs\n"
    "t = time.perf_counter()\n"
    "r = spectrum_rs.scan(sys.argv[1], device='cpu', window_bytes=int(sys.argv[2]))\n"
    f"print(len(r), round(time.perf_counter() - t, 1), {HWM})\n"
)
BASE = f"import spectrum_rs; print({HWM})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default="/tmp/spectrum-rs-experts")
    args = ap.parse_args()
    from safetensors.numpy import save_file

    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    experts, rows, cols = 32, 1024, 2048
    tensor = np.random.default_rng(0).standard_normal((experts, rows, cols), dtype=np.float32)
    save_file({"model.layers.0.mlp.experts.down_proj": tensor}, str(root / "model.safetensors"))
    size = tensor.nbytes / 2**20
    del tensor
    base = float(subprocess.run([sys.executable, "-c", BASE], capture_output=True, text=True, check=True).stdout)
    print(f"tensor {experts} x {rows} x {cols} float32: {size:.0f} MiB; RSS after import: {base:.0f} MiB")
    for window in (128 << 20, 16 << 20):
        out = subprocess.run([sys.executable, "-c", PEAK, str(root), str(window)], capture_output=True, text=True)
        layers, seconds, peak = out.stdout.split()
        print(f"window {window >> 20} MiB: {layers} layers in {seconds} s, peak RSS {float(peak):.0f} MiB")


if __name__ == "__main__":
    main()
