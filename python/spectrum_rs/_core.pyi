"""Type stubs of the native core ``spectrum_rs._core`` (Rust, ``rust/lib.rs``).

Errors are raised as the classes of :mod:`spectrum_rs.errors`: a missing or malformed
model file, or one that changed while being read, is a ``ModelFileError``, a readable
file whose layout or dtype cannot be scanned an ``UnsupportedLayoutError`` (both with
``path``), a bad request a ``SpectrumError``, and a failure of the reader thread (a panic
included) an ``InternalError``. A buffer a file asks for that cannot be allocated is
Python's ``MemoryError``, naming the file, the tensor and the size."""

from os import PathLike
from typing import Any, Iterator, List, Optional, Sequence, Tuple, Union, final

import numpy as np
import numpy.typing as npt

__all__ = [
    "__version__",
    "Catalog",
    "LayerInfo",
    "LayerStream",
    "spectrum_stats",
    "rank_by_type",
    "select_top",
    "layer_type",
    "natural_order",
    "layer_matches",
]

__version__: str

# A model's safetensors files, tensors and layers.
@final
class Catalog:
    def __new__(
        cls,
        paths: Sequence[Union[str, PathLike[str]]],
        scale_block: Optional[Tuple[int, int]] = None,
        *,
        max_experts: int = 65536,
        max_layers: int = 4000000,
        group_experts: bool = False,
        group_by: str = "type",
        split_fused: bool = False,
        model_type: Optional[str] = None,
        quant_method: Optional[str] = None,
        attention_heads: Optional[Tuple[int, int, int]] = None,
    ) -> Catalog: ...
    def layers(self) -> List[LayerInfo]: ...
    def files(self) -> List[Tuple[str, int, int]]: ...
    def tensor_names(self) -> List[str]: ...
    def select(
        self, include: Sequence[str] = ..., exclude: Sequence[str] = ..., include_1d: bool = False
    ) -> List[int]: ...
    def stream(
        self, layers: Sequence[int], window_bytes: int = ..., raw: bool = False, file_order: bool = True
    ) -> LayerStream: ...

# One layer of a catalog (read-only attributes).
@final
class LayerInfo:
    @property
    def index(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def rows(self) -> int: ...
    @property
    def cols(self) -> int: ...
    @property
    def tensor(self) -> str: ...
    @property
    def tensor_shape(self) -> Tuple[int, ...]: ...
    @property
    def dtype(self) -> str: ...
    @property
    def file(self) -> str: ...
    @property
    def expert(self) -> Optional[int]: ...
    @property
    def scale(self) -> Optional[str]: ...
    @property
    def nbytes(self) -> int: ...
    def __repr__(self) -> str: ...

# (layer_index, array, dtype): a 2-D float32 array with dtype "F32", or (raw) a 1-D uint8
# array of the stored bytes with the stored dtype's name.
@final
class LayerStream(Iterator[Tuple[int, npt.NDArray[Any], str]]):
    def __iter__(self) -> LayerStream: ...
    def __next__(self) -> Tuple[int, npt.NDArray[Any], str]: ...
    def close(self) -> None: ...

def spectrum_stats(
    singular_values: npt.NDArray[np.float64], rows: int, cols: int, no_noise_inf: bool = False
) -> Tuple[float, float, float, float, int]: ...
def rank_by_type(types: Sequence[str], snrs: Sequence[float]) -> List[Tuple[str, List[int]]]: ...
def select_top(types: Sequence[str], snrs: Sequence[float], top_percent: float) -> List[bool]: ...
def layer_type(name: str, *, stacked: bool = False, group_experts: bool = False, group_by: str = "type") -> str: ...
def natural_order(names: Sequence[str]) -> List[int]: ...
def layer_matches(pattern: str, name: str, kind: str) -> bool: ...
