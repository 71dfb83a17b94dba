"""Where a model's files are: a local folder or file as given, or a Hugging Face model id
resolved through the local Hugging Face cache (``HF_HOME`` / ``HF_HUB_CACHE`` respected),
downloading only the weights, their index and ``config.json`` when that is allowed."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional

from ..errors import ModelFileError, SpectrumError
from .config import read_config

#: What a download fetches: nothing but what a scan reads.
ALLOW_PATTERNS = ["*.safetensors", "*.safetensors.index.json", "config.json"]
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


def looks_like_repo_id(spec: str) -> bool:
    """``org/name`` or ``name``, not an existing path, not starting with ``.`` or ``/``."""
    return bool(_REPO_ID.match(spec)) and ".." not in spec and not spec.endswith((".safetensors", ".json"))


def resolve_model(spec: str, *, download: Optional[bool] = None, revision: Optional[str] = None) -> Path:
    """The local path of ``spec``. An existing path is returned as it is. A model id is
    looked up in the local Hugging Face cache; when it is missing there it is downloaded
    (only weights, index and config) unless ``download`` is False or the hub is offline
    (``HF_HUB_OFFLINE=1``), in which case the error says so."""
    path = Path(spec).expanduser()
    if path.exists():
        return path
    if not looks_like_repo_id(spec):
        raise ModelFileError(f"{spec}: no such file or directory", path=spec)
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    cache = constants.HF_HUB_CACHE
    cached: Optional[Path] = None
    try:
        cached = Path(snapshot_download(spec, revision=revision, allow_patterns=ALLOW_PATTERNS, local_files_only=True))
    except LocalEntryNotFoundError:
        pass
    except Exception as e:  # a broken cache entry, a bad id
        raise SpectrumError(f"{spec}: cannot read it from the Hugging Face cache {cache} ({e})") from None
    # A snapshot can hold only what other tools fetched (config, tokenizer): weights too?
    if cached is not None and _has_weights(cached):
        return cached
    where = (
        f"its snapshot {cached} in the Hugging Face cache holds no complete set of .safetensors weights"
        if cached is not None
        else f"not in the Hugging Face cache {cache}"
    )
    offline = bool(constants.HF_HUB_OFFLINE)
    if download is False or offline:
        why = (
            "downloading is disabled (--no-download)"
            if download is False
            else "downloading is disabled (HF_HUB_OFFLINE is set)"
        )
        raise SpectrumError(f"{spec}: not a local path, and {where}; {why}")
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    try:
        path = Path(snapshot_download(spec, revision=revision, allow_patterns=ALLOW_PATTERNS))
    except (RepositoryNotFoundError, RevisionNotFoundError):
        raise SpectrumError(
            f"{spec}: not a local path, {where}, and no model {spec!r} on the Hugging Face Hub "
            f"(or it is private: log in with `hf auth login`)"
        ) from None
    except Exception as e:
        raise SpectrumError(
            f"{spec}: not a local path, {where}, and the Hub could not be asked for it ({_first_line(e)})"
        ) from None
    if not _has_weights(path):
        raise SpectrumError(f"{spec}: the model on the Hub has no .safetensors weights (downloaded to {path})")
    return path


def _has_weights(folder: Path) -> bool:
    """True when the folder holds .safetensors files and every shard its index names."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            import json

            shards = set(json.loads(index.read_text(encoding="utf-8")).get("weight_map", {}).values())
        except (OSError, ValueError, AttributeError):
            return True  # let the catalog report what is wrong with the index
        return bool(shards) and all((folder / s).is_file() for s in shards)
    return any(folder.glob("*.safetensors"))


def _first_line(e: BaseException) -> str:
    """An exception in one line: the Hub's messages run over several."""
    text = " ".join(str(e).split("\n")[:1]).strip()
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


_CACHE_SNAPSHOT = re.compile(r"^models--(?P<org>[^/]+?)--(?P<name>[^/]+)$")


def default_name(spec: str) -> str:
    """The model name for result file names when none is given (``--name``): a Hugging
    Face id as typed (``org/name`` -> ``snr_results_org-name.json``, what Axolotl looks for
    when it trains ``org/name``); for a local folder (or a file's folder), the id its
    ``config.json`` records in ``_name_or_path`` when that is a Hub id, the id a Hugging
    Face cache snapshot folder stands for, or else the folder's own name."""
    local = Path(spec).expanduser()
    if not local.exists():
        return os.fspath(spec)  # a Hub id, as given
    folder = local if local.is_dir() else local.parent
    folder = folder.resolve()
    recorded = read_config(folder).get("_name_or_path")
    if isinstance(recorded, str) and "/" in recorded and looks_like_repo_id(recorded) and not Path(recorded).exists():
        return recorded
    if folder.parent.name == "snapshots":
        m = _CACHE_SNAPSHOT.match(folder.parent.parent.name)
        if m:
            return f"{m.group('org')}/{m.group('name')}"
    return folder.name or os.fspath(spec)
