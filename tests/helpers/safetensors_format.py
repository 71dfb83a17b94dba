"""The safetensors file format by hand, with the standard library only: an 8-byte
little-endian header length, the JSON header, then the tensors' bytes; and the two JSON
files around the weights, the index of a sharded model and its ``config.json``.

Shared by ``helpers.models`` (which writes most test models with the safetensors library
itself and only the broken or hand-made ones here) and by ``benches/models.py`` (which
streams models too large to hold in memory, and whose callers must not import numpy or
torch just to read a header)."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

# Bytes per element of the dtypes the tests and benchmarks write.
DTYPE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I32": 4, "I64": 8, "U8": 1}

# (tensor name, safetensors dtype, shape, a function that returns its bytes when called)
StreamedTensor = Tuple[str, str, Sequence[int], Callable[[], Union[bytes, memoryview]]]


def raw_safetensors(path: Path, header, data: bytes = b"", header_len: Optional[int] = None) -> Path:
    """A safetensors file written byte by byte: ``<Q`` header length, header, data.
    ``header`` is a dict (serialised as JSON) or raw bytes; ``header_len`` overrides the
    length field (for files that lie about it)."""
    hb = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(hb) if header_len is None else header_len
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", n) + hb + data)
    return path


def read_header(path: Path) -> Tuple[Dict[str, dict], int]:
    """The JSON header of a safetensors file (``__metadata__`` included, when present) and
    the file offset where its data section begins."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n)), 8 + n


def write_streamed(path: Path, tensors: Sequence[StreamedTensor], metadata: Optional[dict] = None) -> Path:
    """Streams tensors into one safetensors file: the header first (compact JSON, padded
    with spaces so that the data starts 8-byte aligned), then each tensor's bytes as its
    function produces them, so that a model never has to be held in memory. Written to
    ``path.tmp`` and renamed, so a half-written file never has the final name."""
    header: Dict[str, dict] = {} if metadata is None else {"__metadata__": metadata}
    offset = 0
    for name, dtype, shape, _ in tensors:
        size = DTYPE_SIZES[dtype] * _count(shape)
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name, dtype, shape, produce in tensors:
            data = produce()
            if len(data) != DTYPE_SIZES[dtype] * _count(shape):
                raise RuntimeError(f"{name}: produced {len(data)} bytes for shape {tuple(shape)}")
            f.write(data)
    os.replace(tmp, path)
    return path


def write_index(folder: Path, weight_map: Dict[str, str], total_size: Optional[int] = None) -> Path:
    """``model.safetensors.index.json``: which file holds each tensor (and, when given, the
    ``metadata.total_size`` that transformers writes)."""
    index: Dict[str, object] = {} if total_size is None else {"metadata": {"total_size": total_size}}
    index["weight_map"] = weight_map
    path = folder / "model.safetensors.index.json"
    path.write_text(json.dumps(index, indent=2) + "\n")
    return path


def write_config(folder: Path, config: dict) -> Path:
    path = folder / "config.json"
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path


def _count(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n
