"""The SNR heatmap: layer index on x, layer type on y, selected cells outlined. Colours are
scaled per type (each row relative to the best layer of its type), because Spectrum ranks
layers within a type and types differ by orders of magnitude: one shared scale let the
embeddings (SNR ~100) turn every attention row dark. Needs matplotlib (the ``plot`` extra)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np

from .errors import SpectrumError
from .io.text import printable
from .results import ScanResult


def layer_index(name: str) -> Optional[int]:
    """The first all-digit part of a layer name (its block index), or None."""
    for part in name.split("."):
        if part.isdigit():
            return int(part)
    return None


@dataclass
class Heatmap:
    """What the plot draws: a row per type and a column per block index (``labels``);
    ``relative`` is each cell's SNR over the best SNR of its row (``best``), NaN where the
    model has no such layer; ``cells`` maps (row, column) to (SNR, selected)."""

    types: List[str]
    labels: List[str]
    cells: Dict[Tuple[int, int], Tuple[float, bool]]
    best: np.ndarray
    relative: np.ndarray


def heatmap(result: ScanResult, top_percent: Optional[float] = None) -> Heatmap:
    """The cells of the SNR heatmap of ``result``, scaled per type."""
    selected = set(result.select(top_percent))
    types = result.types
    cells: Dict[Tuple[int, int], Tuple[float, bool]] = {}
    columns: List[int] = sorted({i for i in (layer_index(layer.name) for layer in result) if i is not None})
    has_other = any(layer_index(layer.name) is None for layer in result)
    col_of = {c: k for k, c in enumerate(columns)}
    other_col = len(columns)
    for layer in result:
        idx = layer_index(layer.name)
        x = col_of[idx] if idx is not None else other_col
        y = types.index(layer.type)
        # Several layers of one type in one column (experts): show the highest.
        prev = cells.get((y, x))
        snr = float(layer.snr)
        if prev is None or (not math.isnan(snr) and (math.isnan(prev[0]) or snr > prev[0])):
            cells[(y, x)] = (snr, layer.name in selected or (prev is not None and prev[1]))
    labels = [str(c) for c in columns] + (["other"] if has_other else [])
    grid = np.full((len(types), max(len(labels), 1)), np.nan)
    for (y, x), (snr, _) in cells.items():
        grid[y, x] = snr if math.isfinite(snr) else np.nan
    # Each row relative to the best layer of its type: the order that selection uses.
    best = np.array([np.nanmax(row) if np.isfinite(row).any() else np.nan for row in grid])
    with np.errstate(invalid="ignore", divide="ignore"):
        relative = grid / best[:, None]
    return Heatmap(types=types, labels=labels, cells=cells, best=best, relative=relative)


def plot_snr(result: ScanResult, path: Union[str, Path], top_percent: Optional[float] = None, dpi: int = 100) -> Path:
    """Writes a PNG heatmap of ``result`` to ``path`` and returns the path."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch, Rectangle
    except ImportError:
        raise SpectrumError(
            "plotting needs matplotlib: pip install matplotlib (or the extra: '.[plot]' from a checkout, "
            "'spectrum-rs[plot]' from a package index)"
        ) from None

    pct = result.top_percent if top_percent is None else top_percent
    grid = heatmap(result, top_percent)
    types, cells, best, relative, ncols = grid.types, grid.cells, grid.best, grid.relative, len(grid.labels)
    width = min(max(6.0, 0.16 * ncols + 4.0), 40.0)
    height = min(max(3.0, 0.4 * len(types) + 1.8), 30.0)
    fig, ax = plt.subplots(figsize=(width, height), dpi=dpi, layout="constrained")
    cmap = matplotlib.colormaps["viridis"].copy()
    cmap.set_bad("#dddddd")
    lowest = np.nanmin(relative) if np.isfinite(relative).any() else 0.0
    norm = matplotlib.colors.Normalize(vmin=min(float(lowest), 0.999), vmax=1.0)
    im = ax.imshow(np.ma.masked_invalid(relative), aspect="auto", cmap=cmap, norm=norm, interpolation="nearest")
    for (y, x), (_, sel) in cells.items():
        if sel:
            ax.add_patch(Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=1.5))
    labels = grid.labels
    ax.legend(
        handles=[
            Patch(facecolor="#dddddd", edgecolor="none", label="no such layer (or NaN)"),
            Patch(facecolor="none", edgecolor="red", linewidth=1.5, label=f"selected: top {pct:g}% of its type"),
        ],
        loc="upper center",
        bbox_to_anchor=(0.5, -0.12 if len(types) > 2 else -0.25),
        ncol=2,
        fontsize=7,
        frameon=False,
    )
    step = max(1, math.ceil(len(labels) / 40))
    ax.set_xticks(range(0, len(labels), step))
    ax.set_xticklabels(labels[::step], fontsize=7)
    ax.set_yticks(range(len(types)))
    ax.set_yticklabels([printable(t) for t in types], fontsize=8)
    ax.set_xlabel("layer index")
    ax.set_ylabel("layer type")
    ax.set_title(f"Spectrum SNR: {printable(result.model_name)} (outlined: top {pct:g}% per type)", fontsize=9)
    bar = fig.colorbar(im, ax=ax)
    bar.set_label("SNR / best SNR of its type (1 = best)")
    # The best SNR of each type, so the absolute values stay readable.
    ax2 = ax.secondary_yaxis("right")
    ax2.set_yticks(range(len(types)))
    ax2.set_yticklabels([f"max {b:.3g}" if np.isfinite(b) else "" for b in best], fontsize=7)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
