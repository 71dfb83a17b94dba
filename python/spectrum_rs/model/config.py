"""What ``config.json`` beside the weights says that changes the report: whether the output
head is tied to the input embedding (docs/method.md §1) and the block size of FP8 weight
scales."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional, Tuple


def read_config(model_dir: Optional[Path]) -> Dict[str, Any]:
    """The parsed ``config.json`` of a model folder, or ``{}`` when there is none. A
    config that exists but does not parse is ignored with a warning: it does not change
    any SNR, only whether a tied head is listed."""
    if model_dir is None:
        return {}
    path = model_dir / "config.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        import warnings

        warnings.warn(f"{path}: cannot read config.json ({e}); tied embeddings are not reported", stacklevel=3)
        return {}
    return data if isinstance(data, dict) else {}


def ties_embeddings(config: Dict[str, Any]) -> bool:
    """True when the config says the output head shares the input embedding's weight."""
    for c in (config, config.get("text_config") or {}):
        if isinstance(c, dict) and c.get("tie_word_embeddings") is True:
            return True
    return False


def fp8_scale_block(config: Dict[str, Any]) -> Optional[Tuple[int, int]]:
    """``quantization_config.weight_block_size`` (``[128, 128]`` in DeepSeek-V3 and
    Qwen3-FP8 configs), or None when the config declares none or declares it badly."""
    for c in (config, config.get("text_config") or {}):
        q = c.get("quantization_config") if isinstance(c, dict) else None
        block = q.get("weight_block_size") if isinstance(q, dict) else None
        if (
            isinstance(block, (list, tuple))
            and len(block) == 2
            and all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in block)
        ):
            return int(block[0]), int(block[1])
    return None
