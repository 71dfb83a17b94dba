"""Time the layer stream over a ~1 GiB BF16 file (warm cache): write it once under
/tmp/bench1g, then consume ``Catalog(...).stream(...)`` 3 times after one warm-up pass.
``python benches/bench_stream.py [f32|raw]``: decoded float32 (the CPU path) or the stored
bytes (the GPU path). Results: benches/results/stream-2026-12-01.md."""

import json
import os
import struct
import sys
import time

import numpy as np

from spectrum_rs import _core

path = "/tmp/bench1g/model.safetensors"
if not os.path.exists(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(0)
    n, rows, cols = 32, 4096, 4096
    header, off = {}, 0
    for i in range(n):
        size = rows * cols * 2
        header[f"model.layers.{i}.mlp.up_proj.weight"] = {
            "dtype": "BF16",
            "shape": [rows, cols],
            "data_offsets": [off, off + size],
        }
        off += size
    h = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for _ in range(n):
            a = rng.standard_normal(rows * cols, dtype=np.float32)
            f.write((a.view(np.uint32) >> 16).astype("<u2").tobytes())


mode = sys.argv[1] if len(sys.argv) > 1 else "f32"
cat = _core.Catalog([path])
layers = cat.select()


def once():
    t, c = time.perf_counter(), time.process_time()
    total = 0
    for _, a, _ in cat.stream(layers, window_bytes=128 << 20, raw=(mode == "raw")):
        total += a.nbytes
    return time.perf_counter() - t, time.process_time() - c


once()
runs = [once() for _ in range(3)]
print(
    _core.__file__.split("/")[2],
    mode,
    "wall",
    " ".join(f"{w:.3f}" for w, _ in runs),
    "cpu",
    " ".join(f"{c:.3f}" for _, c in runs),
    "best wall",
    f"{min(w for w, _ in runs):.3f}",
    flush=True,
)
