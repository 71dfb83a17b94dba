"""The order a scan reads and computes its layers in, one rule for the scan and for
``spectrum-rs plan``. Several CPU workers take the largest matrices first, by the cost
model that also balances torchrun shares (:func:`.distributed.layer_cost`): in file order
the last large matrix (a Llama's ``lm_head``) ran alone on one core while the other idled.
A GPU, or a single worker, reads in file order, which keeps the disk reading sequentially.
The numbers do not depend on the order (docs/method.md §5.2)."""

from __future__ import annotations

from typing import Callable, List, Sequence, Tuple

from .distributed import layer_cost


def largest_first(devices: Sequence[str]) -> bool:
    """Whether workers on ``devices`` take the largest layers first (several, all CPU)."""
    return len(devices) > 1 and all(d == "cpu" for d in devices)


def read_order(indices: Sequence[int], shape: Callable[[int], Tuple[int, int]], devices: Sequence[str]) -> List[int]:
    """``indices`` in the order to read them: largest first (ties in the order given) when
    :func:`largest_first`, else as given (the caller passes them in file order)."""
    if not largest_first(devices):
        return list(indices)
    return sorted(indices, key=lambda i: -layer_cost(*shape(i)))
