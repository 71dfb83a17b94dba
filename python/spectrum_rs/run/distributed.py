"""Scans spread over processes with ``torch.distributed`` (launched by ``torchrun``): a
deterministic, cost-balanced share of the layers per rank, and the gathering of every
rank's records so that each rank ends with the same, complete result; starting the process
group ``torchrun`` describes and tearing it down again."""

from __future__ import annotations

import heapq
import os
from typing import Dict, List, Optional, Sequence, Tuple

from ..errors import SpectrumError
from ..results import LayerResult


def layer_cost(rows: int, cols: int) -> int:
    """Work of one layer's singular values: the Gram product and the eigensolve, both
    about ``max * min**2`` (+ ``min**3``) multiply-adds."""
    small, large = min(rows, cols), max(rows, cols)
    return large * small * small + small**3 + rows * cols


def shares(costs: Sequence[Tuple[int, int]], world: int) -> List[List[int]]:
    """Splits ``(layer_index, cost)`` pairs over ``world`` ranks: largest cost first to the
    least loaded rank (ties to the lower rank), the same on every rank."""
    loads = [(0, r) for r in range(world)]
    heapq.heapify(loads)
    out: List[List[int]] = [[] for _ in range(world)]
    for index, cost in sorted(costs, key=lambda ic: (-ic[1], ic[0])):
        load, rank = heapq.heappop(loads)
        out[rank].append(index)
        heapq.heappush(loads, (load + cost, rank))
    return [sorted(s) for s in out]


def active() -> Optional[Tuple[int, int]]:
    """``(rank, world_size)`` when a torch.distributed process group is up with more than
    one process, else None."""
    try:
        import torch.distributed as dist
    except ImportError:
        return None
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.get_rank(), dist.get_world_size()
    return None


def init_from_env() -> Optional[Tuple[int, int]]:
    """Starts the process group ``torchrun`` describes in the environment (NCCL when this
    rank has a GPU, else gloo). Returns ``(rank, world_size)``, or None when not launched
    by torchrun with more than one process."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
            dist.init_process_group(backend="nccl")
        else:
            dist.init_process_group(backend="gloo")
    return active()


def local_device(device: object) -> object:
    """Under torchrun, ``"auto"``/``"cuda"`` means this rank's own GPU (``LOCAL_RANK``)."""
    import torch

    if str(device) in ("auto", "cuda") and torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count()
        return f"cuda:{local}"
    return device


def gather(records: Dict[int, LayerResult], error: Optional[BaseException] = None) -> Dict[int, LayerResult]:
    """Every rank's records, merged, on every rank; or, when any rank failed (``error``),
    a ``SpectrumError`` on every rank that says which ranks failed and why."""
    import torch.distributed as dist

    mine = (records, None if error is None else f"{type(error).__name__}: {error}")
    parts: List[Optional[Tuple[Dict[int, LayerResult], Optional[str]]]] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, mine)
    failures = [f"rank {r}: {p[1]}" for r, p in enumerate(parts) if p is not None and p[1] is not None]
    if failures:
        if isinstance(error, SpectrumError) and len(failures) == 1:
            raise error
        raise SpectrumError("distributed scan failed on " + "; ".join(failures))
    merged: Dict[int, LayerResult] = {}
    for p in parts:
        if p is not None:
            merged.update(p[0])
    return merged


def finish() -> None:
    """Waits for every rank (each keeps its checkpoint until the result files are written),
    then destroys the process group: a group left up can abort the process at exit
    ('terminate called without an active exception' was seen after a good scan)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
