"""The Axolotl plugin against the real Axolotl package (its plugin loader, config dict and
freeze_layers_except), and Axolotl's own Spectrum plugin reading the files we write."""

from __future__ import annotations

import json
import re
import types

import pytest

pytest.importorskip("transformers")
base = pytest.importorskip("axolotl.integrations.base", reason="axolotl (pip install --no-deps axolotl addict)")

import tiny_models  # noqa: E402
from axolotl.utils.dict import DictDefault  # noqa: E402
from axolotl.utils.freeze import freeze_layers_except  # noqa: E402

import spectrum_rs  # noqa: E402
from spectrum_rs import SpectrumError  # noqa: E402
from spectrum_rs.integrations.axolotl import SpectrumArgs, SpectrumPlugin, top_percent_from  # noqa: E402
from spectrum_rs.integrations.torch import ScanMismatchError, freeze, scan_model  # noqa: E402

PLUGIN = "spectrum_rs.integrations.axolotl.SpectrumPlugin"
NAME = "org/tiny_llama"  # slug org-tiny-llama
RESULTS = "model_snr_results/snr_results_org-tiny-llama.json"


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def expected_trainable(model, pct):
    probe = tiny_models.llama(n_layers=4)
    probe.load_state_dict(model.state_dict())
    freeze(probe, scan_model(probe), pct)
    return tiny_models.trainable(probe)


def test_plugin_scans_writes_files_and_freezes(llama4_saved, workdir):
    model_bf16, folder = llama4_saved
    plugin = base.load_plugin(PLUGIN)
    assert isinstance(plugin, base.BasePlugin)
    module, cls = plugin.get_input_args().rsplit(".", 1)
    assert getattr(__import__(module, fromlist=[cls]), cls) is SpectrumArgs
    cfg = DictDefault(
        {
            "base_model": str(folder),
            "spectrum_model_name": NAME,
            "spectrum_top_fraction": 0.25,
            "spectrum_download": False,
            "spectrum_device": "cpu",
        }
    )
    plugin.pre_model_load(cfg)
    results = workdir / RESULTS
    assert results.is_file()
    assert (workdir / "model_snr_results/snr_results_org-tiny-llama_unfrozenparameters_25percent.yaml").is_file()
    assert spectrum_rs.ScanResult.load(results).to_dict() == spectrum_rs.scan(folder, device="cpu").to_dict()
    assert all(p.startswith("^") and p.endswith("$") for p in cfg.unfrozen_parameters)

    model = tiny_models.llama(n_layers=4)
    model.load_state_dict(model_bf16.state_dict())
    plugin.post_model_load(cfg, model)
    freeze_layers_except(model, cfg.unfrozen_parameters)  # what Axolotl's train.py does next
    assert tiny_models.trainable(model) == expected_trainable(model, 25)
    plugin.post_trainer_create(cfg, types.SimpleNamespace(model=model))  # passes: the freeze took
    model.model.norm.weight.requires_grad_(True)
    with pytest.raises(SpectrumError, match="does not train what the scan selected"):
        plugin.post_trainer_create(cfg, types.SimpleNamespace(model=model))


def test_plugin_reads_an_existing_results_file(llama4_saved, workdir):
    model_bf16, folder = llama4_saved
    spectrum_rs.scan(folder, device="cpu").save(workdir, 50, name=NAME)
    cfg = DictDefault(
        {
            "base_model": "/nonexistent/model",
            "spectrum_model_name": NAME,
            "spectrum_top_percent": 50,
            "spectrum_download": False,
        }
    )
    plugin = SpectrumPlugin()
    plugin.pre_model_load(cfg)  # no scan: the file is there
    model = tiny_models.llama(n_layers=4)
    model.load_state_dict(model_bf16.state_dict())
    plugin.post_model_load(cfg, model)
    freeze_layers_except(model, cfg.unfrozen_parameters)
    assert tiny_models.trainable(model) == expected_trainable(model, 50)
    # A results file of another model: refused once the model is loaded.
    other = tiny_models.llama(n_layers=2)
    with pytest.raises(ScanMismatchError):
        plugin.post_model_load(cfg, other)


def test_plugin_fails_closed(workdir):
    cfg = DictDefault({"base_model": str(workdir / "missing"), "spectrum_download": False})
    with pytest.raises(SpectrumError, match="scanning .* failed"):
        SpectrumPlugin().pre_model_load(cfg)
    assert cfg.unfrozen_parameters is None  # Axolotl would otherwise train everything
    (workdir / "model_snr_results").mkdir()
    (workdir / RESULTS).write_text("{not json")
    with pytest.raises(SpectrumError, match="cannot read the results file"):
        SpectrumPlugin().pre_model_load(DictDefault({"base_model": NAME}))
    with pytest.raises(SpectrumError, match="adapter"):
        SpectrumPlugin().pre_model_load(DictDefault({"base_model": NAME, "adapter": "lora"}))
    with pytest.raises(SpectrumError, match="sets unfrozen_parameters itself"):
        SpectrumPlugin().pre_model_load(DictDefault({"base_model": NAME, "unfrozen_parameters": ["^lm_head.weight$"]}))


@pytest.mark.parametrize(
    "cfg, expected",
    [
        ({}, 25.0),
        ({"spectrum_top_percent": 40}, 40.0),
        ({"spectrum_top_fraction": 0.5}, 50.0),
        ({"spectrum_top_fraction": 1}, 100.0),
        ({"spectrum_top_percent": 25, "spectrum_top_fraction": 0.25}, 25.0),
    ],
)
def test_top_share(cfg, expected):
    assert top_percent_from(DictDefault(cfg)) == pytest.approx(expected)


@pytest.mark.parametrize(
    "cfg, message",
    [
        ({"spectrum_top_fraction": 50}, "looks like a percent"),
        ({"spectrum_top_fraction": 0}, "not a fraction"),
        ({"spectrum_top_fraction": "half"}, "not a fraction"),
        ({"spectrum_top_percent": 150}, "not a percent"),
        ({"spectrum_top_percent": True}, "not a percent"),
        ({"spectrum_top_percent": 30, "spectrum_top_fraction": 0.25}, "disagree"),
    ],
)
def test_top_share_refused_with_both_explained(cfg, message):
    with pytest.raises(SpectrumError, match=message) as e:
        top_percent_from(DictDefault(cfg))
    assert "spectrum_top_percent takes a percent" in str(e.value)
    assert "spectrum_top_fraction" in str(e.value) and "fraction in (0, 1]" in str(e.value)


def test_axolotls_own_plugin_reads_our_files(llama4_saved, workdir):
    """``axolotl.integrations.spectrum.SpectrumPlugin`` finds our results file locally
    (no download) and selects the same layers as we do."""
    own = pytest.importorskip("axolotl.integrations.spectrum")
    model_bf16, folder = llama4_saved
    spectrum_rs.scan(folder, device="cpu").save(workdir, 25, name=NAME)
    json.loads((workdir / RESULTS).read_text())  # plain JSON the reference reader takes
    cfg = DictDefault({"base_model": NAME, "spectrum_top_fraction": 0.25})
    own.SpectrumPlugin().pre_model_load(cfg)
    model = tiny_models.llama(n_layers=4)
    model.load_state_dict(model_bf16.state_dict())
    freeze_layers_except(model, cfg.unfrozen_parameters)
    assert tiny_models.trainable(model) == expected_trainable(model, 25)


def qwen2_moe(seed=0):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.Qwen2MoeConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
        shared_expert_intermediate_size=24, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        num_experts=6, num_experts_per_tok=2,
    )  # fmt: skip
    torch = pytest.importorskip("torch")
    torch.manual_seed(seed)
    model = transformers.Qwen2MoeForCausalLM(cfg)
    if "model.layers.0.mlp.experts.gate_up_proj" not in dict(model.named_parameters()):
        pytest.skip("this transformers keeps the experts apart in memory")
    return model


def test_an_moe_model_fused_in_memory_is_scanned_in_memory_when_asked(tmp_path, workdir):
    """transformers 5 fuses a Qwen2-MoE checkpoint's per-expert matrices into
    ``mlp.experts.gate_up_proj`` when it loads it: the scan of the files names no
    parameter of the loaded model, and the plugin refuses it, saying what to set. With
    ``spectrum_scan_in_memory`` it scans the loaded model in post_model_load (nothing can
    train before: the pending pattern matches no parameter), writes the files, freezes
    exactly what ``freeze`` of that scan trains, and a second run reads the files."""
    model = qwen2_moe()
    folder = tmp_path / "moe"
    model.save_pretrained(folder)
    common = {"base_model": str(folder), "spectrum_model_name": NAME, "spectrum_download": False}

    plugin = SpectrumPlugin()
    cfg = DictDefault(dict(common, spectrum_device="cpu"))
    plugin.pre_model_load(cfg)  # scans the files
    with pytest.raises(ScanMismatchError, match="fused in memory.*spectrum_scan_in_memory: true"):
        plugin.post_model_load(cfg, model)
    (workdir / RESULTS).unlink()

    plugin = SpectrumPlugin()
    cfg = DictDefault(dict(common, spectrum_scan_in_memory=True, spectrum_group_experts=True))
    plugin.pre_model_load(cfg)
    assert not (workdir / RESULTS).exists()
    assert cfg.unfrozen_parameters and not any(
        re.match(p, n) for p in cfg.unfrozen_parameters for n, _ in model.named_parameters()
    ), "until the scan, the patterns match no parameter"
    plugin.post_model_load(cfg, model)
    written = spectrum_rs.ScanResult.load(workdir / RESULTS)
    assert "mlp.experts.gate_up_proj.*" in written.types
    freeze_layers_except(model, cfg.unfrozen_parameters)
    probe = qwen2_moe()
    probe.load_state_dict(model.state_dict())
    freeze(probe, scan_model(probe, group_experts=True), 25)
    assert tiny_models.trainable(model) == tiny_models.trainable(probe)
    assert any("experts.gate_up_proj" in n for n in tiny_models.trainable(model))
    plugin.post_trainer_create(cfg, types.SimpleNamespace(model=model))

    again = SpectrumPlugin()
    cfg2 = DictDefault(dict(common, spectrum_scan_in_memory=True, spectrum_group_experts=True))
    again.pre_model_load(cfg2)  # reads the file the first run wrote
    again.post_model_load(cfg2, probe)
    assert cfg2.unfrozen_parameters == cfg.unfrozen_parameters


def test_axolotl_config_validation_keeps_our_settings():
    """Axolotl merges the plugin's SpectrumArgs into its config schema (``get_input_args``),
    so validation keeps the ``spectrum_*`` keys (it drops keys no schema knows)."""
    config = pytest.importorskip("axolotl.utils.config")
    manager = base.PluginManager.get_instance()
    try:
        manager.register(PLUGIN)
        assert PLUGIN in manager.plugins
        cfg = DictDefault(
            {
                "base_model": NAME,
                "plugins": [PLUGIN],
                "spectrum_top_fraction": 0.3,
                "spectrum_download": False,
                "spectrum_scan_in_memory": True,
                "spectrum_group_experts": True,
                "spectrum_group_by": "stack",
                "datasets": [{"path": "x", "type": "alpaca"}],
                "micro_batch_size": 1,
                "gradient_accumulation_steps": 1,
                "learning_rate": 1e-5,
                "sequence_len": 64,
                "num_epochs": 1,
                "output_dir": "out",
            }
        )
        valid = config.validate_config(cfg)
        assert valid.spectrum_top_fraction == pytest.approx(0.3) and valid.spectrum_download is False
        assert valid.spectrum_scan_in_memory is True and valid.spectrum_group_experts is True
        assert valid.spectrum_group_by == "stack"
        assert top_percent_from(valid) == pytest.approx(30)
    finally:
        manager.plugins.pop(PLUGIN, None)
