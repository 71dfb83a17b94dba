"""What ``config.json`` beside the weights says that changes the report: whether the output
head is tied to the input embedding (docs/method.md §1), the block size of FP8 weight
scales, the family (``model_type``: how it fuses its projections) and the quantization
method (named when a packed format is refused; docs/layouts.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple


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


def _text_first(config: Dict[str, Any]) -> Iterator[Dict[str, Any]]:
    """The config, then its ``text_config`` (multimodal models keep the language model's
    settings there)."""
    for c in (config, config.get("text_config") or {}):
        if isinstance(c, dict):
            yield c


def model_type(config: Dict[str, Any]) -> Optional[str]:
    """``model_type`` (``"gpt_oss"``, ``"llama4"``, ``"qwen3_moe"``), or None."""
    for c in _text_first(config):
        t = c.get("model_type")
        if isinstance(t, str) and t:
            return t
    return None


def quant_method(config: Dict[str, Any]) -> Optional[str]:
    """``quantization_config.quant_method`` (``"gptq"``, ``"awq"``, ``"fp8"``, ``"mxfp4"``), or None."""
    for c in _text_first(config):
        q = c.get("quantization_config")
        m = q.get("quant_method") if isinstance(q, dict) else None
        if isinstance(m, str) and m:
            return m
    return None


def _positive_int(*values: Any) -> Optional[int]:
    for v in values:
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


def attention_heads(config: Dict[str, Any]) -> Optional[Tuple[int, int, int]]:
    """``(heads, key/value heads, head size)`` of the (language) model, to split fused
    attention (docs/layouts.md), or None when the config does not say."""
    for c in _text_first(config):
        heads = _positive_int(c.get("num_attention_heads"), c.get("n_head"), c.get("num_heads"), c.get("n_heads"))
        if heads is None:
            continue
        kv: Optional[int] = _positive_int(c.get("num_key_value_heads"), c.get("num_kv_heads")) or heads
        hidden = _positive_int(c.get("hidden_size"), c.get("n_embd"), c.get("d_model"))
        size = _positive_int(c.get("head_dim")) or (hidden // heads if hidden else None)
        if c.get("model_type") == "falcon" and not c.get("new_decoder_architecture"):
            # FalconAttention: one key/value head when multi_query (its default), else one per head.
            kv = 1 if c.get("multi_query", True) else heads
        elif c.get("model_type") == "dbrx" and isinstance(c.get("attn_config"), dict):
            kv = _positive_int(c["attn_config"].get("kv_n_heads")) or heads
        elif c.get("model_type") == "chatglm":
            kv = _positive_int(c.get("multi_query_group_num")) if c.get("multi_query_attention") else heads
            size = _positive_int(c.get("kv_channels")) or size
        return (heads, kv, size) if size and kv else None
    return None
