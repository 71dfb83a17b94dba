"""An Axolotl plugin: ``plugins: [spectrum_rs.integrations.axolotl.SpectrumPlugin]``.

Unlike Axolotl's own ``axolotl.integrations.spectrum.SpectrumPlugin`` (which reads a
results file or downloads a published one, and trains the whole model with a warning when
neither works), this plugin scans the model itself when no results file exists, and fails
closed: a model it cannot scan, a results file it cannot read, a scan that does not fit
the loaded model, or a freeze that did not take raises before training starts.

What it does, by Axolotl hook:

* ``pre_model_load``: finds ``./model_snr_results/snr_results_{slug}.json`` (``slug`` =
  the model name with ``/`` and ``_`` replaced by ``-``; the folder is
  ``spectrum_results_dir``, default the current one, where Axolotl's own plugin looks).
  When it is missing it scans ``spectrum_model_path`` (default ``base_model``: a local
  folder or a Hugging Face id, read from the cache and downloaded unless
  ``spectrum_download: false`` or ``HF_HUB_OFFLINE=1``) and writes the usual three files
  there. It sets ``cfg.unfrozen_parameters`` to anchored patterns of the selected
  parameters and of the embedding and head weights.
* ``post_model_load``: checks that the scan fits the loaded model
  (:class:`~spectrum_rs.integrations.torch.ScanMismatchError` if not) and rewrites
  ``unfrozen_parameters`` with the exact parameter names of this model (its real
  embeddings and head, tied or not), which Axolotl then applies.
* ``post_trainer_create``: checks that exactly those parameters require grad.

Settings (all optional; see :class:`SpectrumArgs`): ``spectrum_top_percent`` (a percent,
0-100) or ``spectrum_top_fraction`` (Axolotl's name: a fraction in (0, 1]), default 25 %;
``spectrum_model_name`` (for the file name; default ``base_model``),
``spectrum_model_path``, ``spectrum_results_dir``, ``spectrum_download``,
``spectrum_device``, ``spectrum_types``, ``spectrum_exclude``, ``spectrum_group_experts``,
``spectrum_group_by``, ``spectrum_embeddings`` and ``spectrum_head`` (default true: train
the input embeddings / the head too), and ``spectrum_scan_in_memory``: scan the loaded
model's weights in ``post_model_load`` instead of the checkpoint files when no results
file exists (mixture-of-experts models that transformers 5 fuses in memory, whose
parameters a scan of the files cannot name).

This module imports Axolotl's plugin base (which imports torch, transformers and peft);
``import spectrum_rs`` does not import it.
"""

from __future__ import annotations

import logging
import math
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..errors import ScanMismatchError, SpectrumError
from ..model.layouts import HEAD
from ..options import DEFAULT_TOP_PERCENT, as_list
from ..results import ScanResult

try:
    from axolotl.integrations.base import BasePlugin as _BasePlugin

    _IMPORT_ERROR: Optional[BaseException] = None
except ImportError as _e:  # the class stays importable; using it says why it cannot work
    _BasePlugin = object
    _IMPORT_ERROR = _e

try:
    from pydantic import BaseModel as _BaseModel
except ImportError:  # pragma: no cover - Axolotl depends on pydantic
    _BaseModel = object  # type: ignore[misc,assignment]

__all__ = ["SpectrumPlugin", "SpectrumArgs", "top_percent_from", "unfrozen_patterns"]

log = logging.getLogger("spectrum_rs.integrations")

_TOP_HELP = (
    "spectrum_top_percent takes a percent from 0 to 100 (25 = a quarter of each layer type); "
    "spectrum_top_fraction (the key of Axolotl's own Spectrum plugin) takes a fraction in (0, 1] "
    "(0.25 = a quarter)"
)
#: Parameter names the patterns can hold as they are: Axolotl escapes every dot itself.
_SAFE_NAME = re.compile(r"[A-Za-z0-9_.\-]+")


class SpectrumArgs(_BaseModel):
    """The plugin's settings, merged into Axolotl's config schema."""

    spectrum_top_percent: Optional[float] = None
    spectrum_top_fraction: Optional[float] = None
    spectrum_model_name: Optional[str] = None
    spectrum_model_path: Optional[str] = None
    spectrum_results_dir: Optional[str] = None
    spectrum_download: Optional[bool] = None
    spectrum_device: Optional[str] = None
    spectrum_types: Optional[List[str]] = None
    spectrum_exclude: Optional[List[str]] = None
    spectrum_group_experts: Optional[bool] = None
    spectrum_group_by: Optional[str] = None
    spectrum_scan_in_memory: Optional[bool] = None
    spectrum_embeddings: Optional[bool] = None
    spectrum_head: Optional[bool] = None


#: ``unfrozen_parameters`` while an in-memory scan waits for the model
#: (``spectrum_scan_in_memory``): a pattern no parameter matches, so that if the scan never
#: ran, Axolotl would freeze everything rather than train everything.
PENDING_PATTERN = "^spectrum-rs: scanned in post_model_load$"


def _layer_options(cfg: Any) -> Dict[str, Any]:
    """The scan options the settings give, for a scan of the files and of the loaded model."""
    return {
        "types": as_list(_get(cfg, "spectrum_types")) or None,
        "exclude": as_list(_get(cfg, "spectrum_exclude")) or None,
        "group_experts": bool(_get(cfg, "spectrum_group_experts")),
        "group_by": _get(cfg, "spectrum_group_by") or "type",
    }


def _get(cfg: Any, key: str) -> Any:
    try:
        return cfg.get(key)
    except AttributeError:
        return getattr(cfg, key, None)


def _number(value: Any) -> Optional[float]:
    if isinstance(value, bool):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def top_percent_from(cfg: Any) -> float:
    """The share of each layer type to train, as a percent, from ``spectrum_top_percent``
    (a percent) or ``spectrum_top_fraction`` (a fraction); 25 when neither is set. A
    value outside its range is refused, never reinterpreted (50 as a fraction is an
    error, not 50 %)."""
    pct_raw, frac_raw = _get(cfg, "spectrum_top_percent"), _get(cfg, "spectrum_top_fraction")
    pct = frac = None
    if pct_raw is not None:
        pct = _number(pct_raw)
        if pct is None or not 0 <= pct <= 100:
            raise SpectrumError(f"spectrum_top_percent={pct_raw!r} is not a percent from 0 to 100. {_TOP_HELP}")
        if 0 < pct < 1:
            log.warning(
                "spectrum_top_percent=%s is read as %s %% (less than one percent); for a fraction use "
                "spectrum_top_fraction",
                pct_raw,
                pct,
            )
    if frac_raw is not None:
        frac = _number(frac_raw)
        if frac is None or not 0 < frac <= 1:
            hint = (
                f"; {frac_raw} looks like a percent: write spectrum_top_percent: {frac_raw} or "
                f"spectrum_top_fraction: {frac / 100:g}"
                if frac is not None and 1 < frac <= 100
                else ""
            )
            raise SpectrumError(f"spectrum_top_fraction={frac_raw!r} is not a fraction in (0, 1]{hint}. {_TOP_HELP}")
    if pct is not None and frac is not None:
        if not math.isclose(pct, frac * 100, rel_tol=1e-9, abs_tol=1e-9):
            raise SpectrumError(
                f"spectrum_top_percent={pct_raw!r} and spectrum_top_fraction={frac_raw!r} disagree; "
                f"give one of them. {_TOP_HELP}"
            )
        return pct
    if pct is not None:
        return pct
    if frac is not None:
        return frac * 100
    log.info(
        "SpectrumPlugin: neither spectrum_top_percent nor spectrum_top_fraction is set: training the top %g %% "
        "of each layer type",
        DEFAULT_TOP_PERCENT,
    )
    return DEFAULT_TOP_PERCENT


def _patterns(names: List[str]) -> List[str]:
    """Anchored Axolotl patterns (``^name$``; Axolotl escapes the dots) of parameter names."""
    bad = [n for n in names if not _SAFE_NAME.fullmatch(n)]
    if bad:
        raise SpectrumError(
            f"SpectrumPlugin: parameter name(s) {bad[:5]} hold characters that Axolotl's "
            f"unfrozen_parameters patterns would read as regex syntax"
        )
    out: List[str] = []
    for n in names:
        p = f"^{n}$"
        if p not in out:
            out.append(p)
    return out


def unfrozen_patterns(
    result: ScanResult, top_percent: float, *, embeddings: bool = True, head: bool = True
) -> List[str]:
    """``unfrozen_parameters`` for Axolotl from a scan alone: the head and embedding
    weights the scan knows of (when asked), then each selected layer's parameter, as
    anchored patterns that match exactly that parameter."""
    names: List[str] = []
    emb = result.embedding_layers()
    if head and HEAD in emb:
        names.append(f"{HEAD}.weight")
    if embeddings:
        names += [f"{n}.weight" for n in emb if n != HEAD]
    by_name = {layer.name: layer for layer in result.layers}
    names += [by_name[n].parameter for n in result.select(top_percent)]
    if not names:
        raise SpectrumError(
            f"SpectrumPlugin: top {top_percent:g} % selects no layer of {result.model_name!r} and no "
            f"embedding or head is to train: nothing would train (Axolotl would then train "
            f"everything). {_TOP_HELP}"
        )
    return _patterns(names)


def _rank() -> int:
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return int(dist.get_rank())
    except ImportError:
        pass
    return int(os.environ.get("RANK", "0") or 0)


class SpectrumPlugin(_BasePlugin):
    """Spectrum for Axolotl, scanning the model itself when no results file exists.
    ``result`` (the scan in force), ``top_percent`` and ``results_path`` are set by
    ``pre_model_load``."""

    def __init__(self) -> None:
        if _IMPORT_ERROR is not None:
            raise ImportError(
                f"spectrum_rs.integrations.axolotl.SpectrumPlugin needs Axolotl "
                f"(axolotl.integrations.base): {_IMPORT_ERROR}"
            ) from _IMPORT_ERROR
        super().__init__()
        self.result: Optional[ScanResult] = None
        self.top_percent: Optional[float] = None
        self.results_path: Optional[Path] = None
        self.embeddings = True
        self.head = True
        self._expected: Optional[List[str]] = None
        self._name = ""
        self._folder = Path(".")

    def get_input_args(self) -> str:
        return "spectrum_rs.integrations.axolotl.SpectrumArgs"

    # -- hooks --------------------------------------------------------------------------

    def pre_model_load(self, cfg: Any) -> None:
        if _get(cfg, "adapter"):
            raise SpectrumError(
                f"SpectrumPlugin selects layers for full fine-tuning, but adapter: "
                f"{_get(cfg, 'adapter')} is set; for LoRA on the selected layers use "
                f"spectrum_rs.integrations.peft.peft_target_modules (lora_target_modules)"
            )
        if _get(cfg, "unfrozen_parameters"):
            raise SpectrumError(
                "SpectrumPlugin sets unfrozen_parameters itself: remove unfrozen_parameters from the "
                "config, or remove the plugin"
            )
        name = _get(cfg, "spectrum_model_name") or _get(cfg, "base_model")
        if not name:
            raise SpectrumError("SpectrumPlugin: the config has neither spectrum_model_name nor base_model")
        name = str(name)
        self.top_percent = pct = top_percent_from(cfg)
        self.embeddings = _get(cfg, "spectrum_embeddings") is not False
        self.head = _get(cfg, "spectrum_head") is not False
        folder = Path(_get(cfg, "spectrum_results_dir") or ".")
        from ..io.reference_files import RESULTS_DIR, slug

        path = folder / RESULTS_DIR / f"snr_results_{slug(name)}.json"
        self.results_path = path
        self._name, self._folder = name, folder
        if path.is_file():
            try:
                result = ScanResult.load(path)
            except SpectrumError as e:
                raise SpectrumError(
                    f"SpectrumPlugin: cannot read the results file {path}: {e}; delete it to scan the model again"
                ) from e
            log.info("SpectrumPlugin: read %s (%d layers)", path, len(result))
        elif _get(cfg, "spectrum_scan_in_memory"):
            log.info("SpectrumPlugin: no results file %s: scanning the model once it is loaded", path)
            self.result = None
            cfg["unfrozen_parameters"] = [PENDING_PATTERN]
            return
        else:
            result = self._scan(cfg, name, pct, folder, path)
        result.top_percent = pct
        self.result = result
        self._expected = unfrozen_patterns(result, pct, embeddings=self.embeddings, head=self.head)
        cfg["unfrozen_parameters"] = list(self._expected)
        log.info(
            "SpectrumPlugin: top %g %% of each layer type: %d patterns in unfrozen_parameters", pct, len(self._expected)
        )

    def post_model_load(self, cfg: Any, model: Any) -> None:
        if self.top_percent is None:
            raise SpectrumError("SpectrumPlugin: post_model_load ran before pre_model_load")
        from .torch.fit import plan_training

        if self.result is None:  # spectrum_scan_in_memory, and no results file
            self.result = self._scan_loaded(cfg, model, self.top_percent)
        try:
            plan = plan_training(model, self.result, self.top_percent, self.embeddings, self.head)
        except ScanMismatchError as e:
            if e.fused_in_memory is None:
                raise
            raise ScanMismatchError(
                f"{e}. With Axolotl: delete {self.results_path} and set spectrum_scan_in_memory: true "
                f"(and spectrum_group_experts: true to rank the experts together)",
                missing_in_model=e.missing_in_model,
                missing_in_scan=e.missing_in_scan,
                shape_mismatches=e.shape_mismatches,
                fused_in_memory=e.fused_in_memory,
            ) from e
        if not plan.train:
            raise SpectrumError(
                f"SpectrumPlugin: nothing would train (top {self.top_percent:g} %, "
                f"spectrum_embeddings={self.embeddings}, spectrum_head={self.head})"
            )
        names = [e.name for e in plan.tensors.unique if id(e.tensor) in plan.train]
        self._expected = _patterns(names)
        cfg["unfrozen_parameters"] = list(self._expected)
        for p in plan.partial_fused:
            log.warning("SpectrumPlugin: fused expert tensor trains whole: %s", p)

    def post_trainer_create(self, cfg: Any, trainer: Any) -> None:
        if self.result is None or self.top_percent is None:
            return
        from .torch.fit import listing, plan_training
        from .torch.freeze import summarize

        model = getattr(trainer, "model", None)
        if model is None:
            raise SpectrumError("SpectrumPlugin: the trainer has no model to check")
        plan = plan_training(model, self.result, self.top_percent, self.embeddings, self.head)
        trains = {id(e.tensor) for e in plan.tensors.unique if e.tensor.requires_grad}
        wanted = set(plan.train)
        extra = [e.name for e in plan.tensors.unique if id(e.tensor) in trains - wanted]
        missing = [e.name for e in plan.tensors.unique if id(e.tensor) in wanted - trains]
        if extra or missing:
            raise SpectrumError(
                f"SpectrumPlugin: the model does not train what the scan selected: {len(missing)} selected "
                f"parameter(s) frozen ({listing(missing)}), {len(extra)} other parameter(s) trainable "
                f"({listing(extra)}); was unfrozen_parameters changed after the plugin set it?"
            )
        log.info("SpectrumPlugin: %s", summarize(plan))

    # -- scanning -----------------------------------------------------------------------

    def _scan_loaded(self, cfg: Any, model: Any, pct: float) -> ScanResult:
        """``scan_model`` of the loaded model (``spectrum_scan_in_memory``); rank 0 writes
        the usual three files, so that the next run reads them."""
        from .torch import scan_model

        log.info("SpectrumPlugin: scanning the loaded model in memory")
        result = scan_model(model, top_percent=pct, name=self._name, **_layer_options(cfg))
        if _rank() == 0:
            written = result.save(self._folder, pct, name=self._name)
            log.info("SpectrumPlugin: wrote %s", ", ".join(str(p) for p in written.values()))
        return result

    def _scan(self, cfg: Any, name: str, pct: float, folder: Path, path: Path) -> ScanResult:
        import spectrum_rs

        source = str(_get(cfg, "spectrum_model_path") or _get(cfg, "base_model") or name)
        download = _get(cfg, "spectrum_download")
        distributed = False
        try:
            import torch.distributed as dist

            distributed = bool(dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1)
        except ImportError:
            pass
        log.info("SpectrumPlugin: no results file %s: scanning %s", path, source)
        try:
            result = spectrum_rs.scan(
                source,
                top_percent=pct,
                name=name,
                download=download,
                device=_get(cfg, "spectrum_device") or "auto",
                distributed_scan=distributed,
                **_layer_options(cfg),
            )
        except KeyboardInterrupt:
            raise
        except Exception as e:
            raise SpectrumError(
                f"SpectrumPlugin: no results file {path}, and scanning {source!r} failed: {e}. "
                f"Scan it beforehand with `spectrum-rs scan {source} --out {folder}`, or set "
                f"spectrum_model_path to a local copy of the model"
            ) from e
        if _rank() == 0:
            written = result.save(folder, pct, name=name)
            log.info("SpectrumPlugin: wrote %s", ", ".join(str(p) for p in written.values()))
        return result
