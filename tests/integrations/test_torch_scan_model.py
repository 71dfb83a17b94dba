"""scan_model(): an in-memory model (or its state dict) gives the numbers scan() gives for
the same weights saved with save_pretrained: the same layers, types, SNRs, selection and
tied head."""

from __future__ import annotations

import math
import sys
import types as pytypes
from contextlib import contextmanager

import pytest
import torch

pytest.importorskip("transformers")

import tiny_models

import spectrum_rs
from spectrum_rs import UnsupportedLayoutError
from spectrum_rs.integrations.torch import scan_model


def assert_same_scan(a, b):
    """Same layers in the same order, same types/shapes/dtypes/ties, SNRs to 1e-6."""
    assert [lay.name for lay in a] == [lay.name for lay in b]
    for x, y in zip(a, b):
        assert (x.type, x.shape, x.dtype, x.tied_to, x.parameter) == (
            y.type,
            y.shape,
            y.dtype,
            y.tied_to,
            y.parameter,
        ), x.name
        if math.isnan(x.snr):
            assert math.isnan(y.snr)
        else:
            assert y.snr == pytest.approx(x.snr, rel=1e-6, abs=0), x.name
        assert y.n_signal == x.n_signal
    for pct in (25, 50, 100):
        assert a.select(pct) == b.select(pct)
    assert a.embedding_layers() == b.embedding_layers()


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "f32"])
def test_scan_model_equals_scan_of_saved_weights(tmp_path, tie, dtype):
    model = tiny_models.llama(n_layers=4, tie=tie, dtype=dtype)
    model.save_pretrained(tmp_path)
    on_disk = spectrum_rs.scan(tmp_path, device="cpu")
    in_memory = scan_model(model)
    assert_same_scan(on_disk, in_memory)
    head = in_memory["lm_head"]
    assert (head.tied_to == "model.embed_tokens") is tie
    assert head.parameter == "lm_head.weight"
    # The state dict gives the same (the tie from shared storage, or from the config).
    assert_same_scan(on_disk, scan_model(model.state_dict(), config=model.config))
    assert in_memory.settings["source"] == "module"


def test_scan_model_options_match_scan(llama4_saved):
    model, folder = llama4_saved
    for kw in (
        {"types": ["self_attn.*"]},
        {"exclude": ["mlp.down_proj", "lm_head"]},
        {"include_1d": True},
        {"types": ["lm_head"]},
        {"method": "svd"},
        {"dtype": "float64", "no_noise": "inf"},
    ):
        assert_same_scan(spectrum_rs.scan(folder, device="cpu", **kw), scan_model(model, **kw))


def test_scan_model_runs_the_cpu_workers_of_scan_whatever_the_blas_threads(tmp_path):
    """With two BLAS threads in the process (as in a training script), scan_model plans
    what scan() plans, two single-threaded workers, and its numbers are scan()'s bit for
    bit; the caller's threads come back."""
    from threadpoolctl import threadpool_info, threadpool_limits

    model = tiny_models.llama(n_layers=3, dtype=torch.bfloat16)
    model.save_pretrained(tmp_path)
    seen = []
    with threadpool_limits(limits=2, user_api="blas"):
        on_disk = spectrum_rs.scan(tmp_path, device="cpu")
        in_memory = scan_model(model, progress=lambda *a: seen.append(a))
        threads = [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]
    assert on_disk.settings["device"] == in_memory.settings["device"] == "cpu x2"
    assert [(r.name, r.snr, r.sigma, r.n_signal) for r in in_memory] == [
        (r.name, r.snr, r.sigma, r.n_signal) for r in on_disk
    ]
    assert threads == [2] * len(threads)
    assert [a[0] for a in seen] == list(range(1, len(seen) + 1)), "progress counts every layer once, in order"
    assert seen[-1][0] == seen[-1][1] and seen[-1][2] == seen[-1][3]
    assert {a[4] for a in seen} == {r.name for r in in_memory if r.tied_to is None}


def test_scan_model_does_not_touch_the_model(llama4):
    before = tiny_models.snapshot(llama4)
    llama4.model.layers[0].mlp.up_proj.weight.requires_grad_(False)
    flags = {n: p.requires_grad for n, p in llama4.named_parameters()}
    scan_model(llama4)
    assert tiny_models.changed(before, tiny_models.snapshot(llama4)) == set()
    assert flags == {n: p.requires_grad for n, p in llama4.named_parameters()}


class Experts(torch.nn.Module):
    """A fused-experts MoE block as transformers 5 stores it: [E, out, in] tensors
    without a ``.weight`` suffix, beside ordinary linear layers."""

    def __init__(self, n_layers=2, experts=4, hidden=16, inter=24):
        super().__init__()
        self.layers = torch.nn.ModuleList()
        for _ in range(n_layers):
            block = torch.nn.Module()
            block.mlp = torch.nn.Module()
            block.mlp.experts = torch.nn.Module()
            block.mlp.experts.gate_up_proj = torch.nn.Parameter(torch.randn(experts, 2 * inter, hidden))
            block.mlp.experts.down_proj = torch.nn.Parameter(torch.randn(experts, hidden, inter))
            block.mlp.gate = torch.nn.Linear(hidden, experts, bias=False)
            block.norm = torch.nn.LayerNorm(hidden)
            self.layers.append(block)


@pytest.mark.parametrize(
    "grouping, expert_type",
    [
        ({}, "mlp.experts.down_proj.3"),
        ({"group_experts": True}, "mlp.experts.down_proj.*"),
        ({"group_by": "stack"}, "layers.*.mlp.experts.down_proj.3"),
        ({"group_experts": True, "group_by": "stack"}, "layers.*.mlp.experts.down_proj.*"),
    ],
    ids=["reference", "group-experts", "group-by-stack", "both"],
)
def test_scan_model_fused_experts_match_scan(tmp_path, grouping, expert_type):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = Experts()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "model.safetensors"))
    on_disk = spectrum_rs.scan(tmp_path, device="cpu", **grouping)
    in_memory = scan_model(model, **grouping)
    assert_same_scan(on_disk, in_memory)
    expert = in_memory["layers.1.mlp.experts.down_proj.3"]
    assert expert.parameter == "layers.1.mlp.experts.down_proj" and expert.shape == (16, 24)
    assert expert.type == expert_type
    assert in_memory.settings["group_experts"] == grouping.get("group_experts", False)


@pytest.mark.parametrize("family", ["qwen2_moe", "mixtral"])
def test_a_checkpoint_scan_of_a_model_transformers_fuses_in_memory_is_refused_with_the_way_out(tmp_path, family):
    """transformers 5 loads a Qwen2-MoE checkpoint's per-expert matrices
    (``mlp.experts.3.gate_proj.weight``; Mixtral's ``block_sparse_moe.experts.3.w1.weight``)
    into fused ``[E, out, in]`` parameters (``mlp.experts.gate_up_proj``): a scan of the
    files names no parameter of the model. freeze refuses it, names the fused tensor and
    says to scan in memory; that scan fits."""
    transformers = pytest.importorskip("transformers")
    from spectrum_rs import ScanMismatchError
    from spectrum_rs.integrations.torch import freeze

    common = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    if family == "qwen2_moe":
        cfg = transformers.Qwen2MoeConfig(
            intermediate_size=64, moe_intermediate_size=16, shared_expert_intermediate_size=24, num_experts=6,
            num_experts_per_tok=2, **common,
        )  # fmt: skip
        model_class = transformers.Qwen2MoeForCausalLM
    else:
        cfg = transformers.MixtralConfig(intermediate_size=16, num_local_experts=6, num_experts_per_tok=2, **common)
        model_class = transformers.MixtralForCausalLM
    torch.manual_seed(0)
    model = model_class(cfg)
    model.save_pretrained(tmp_path)
    params = dict(model.named_parameters())
    if "model.layers.0.mlp.experts.gate_up_proj" not in params:
        pytest.skip("this transformers keeps the experts apart in memory")
    before = {n: p.requires_grad for n, p in params.items()}
    with pytest.raises(ScanMismatchError, match=r"fused in memory \(model\.layers\.\d\.mlp\.experts\.\w+, shape \[6, "):
        freeze(model, spectrum_rs.scan(tmp_path, device="cpu"))
    assert before == {n: p.requires_grad for n, p in model.named_parameters()}, "nothing changed"
    result = scan_model(model, group_experts=True)
    assert "mlp.experts.gate_up_proj.*" in result.types
    freeze(model, result)
    chosen = set(result.select(25))
    for layer in (0, 1):
        for fused_name in ("gate_up_proj", "down_proj"):
            tensor = f"model.layers.{layer}.mlp.experts.{fused_name}"
            picked = any(f"{tensor}.{e}" in chosen for e in range(6))
            assert params[tensor].requires_grad == picked, tensor  # a fused tensor trains whole
    # Its results file (names and SNRs only) applies the same: each expert's fused tensor
    # is found in the model.
    trains = {n for n, p in model.named_parameters() if p.requires_grad}
    for p in model.parameters():
        p.requires_grad_(True)
    loaded = spectrum_rs.ScanResult.load(result.save(tmp_path / "out", name="moe")["results"])
    assert loaded["model.layers.0.mlp.experts.gate_up_proj.3"].tensor is None
    freeze(model, loaded, 25)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trains


def test_state_dict_tie_by_shared_storage():
    model = tiny_models.llama(n_layers=2, tie=True)
    sd = model.state_dict()
    assert sd["lm_head.weight"].data_ptr() == sd["model.embed_tokens.weight"].data_ptr()
    result = scan_model(sd)  # no config: the shared storage says it
    assert result["lm_head"].tied_to == "model.embed_tokens"
    untied = {k: (v.clone() if k == "lm_head.weight" else v) for k, v in sd.items()}
    assert scan_model(untied)["lm_head"].tied_to is None


def test_unscannable_dtype_is_refused_unless_excluded():
    model = torch.nn.Module()
    model.proj = torch.nn.Linear(8, 8)
    model.q = torch.nn.Module()
    model.q.register_parameter("weight", torch.nn.Parameter(torch.zeros(8, 8, dtype=torch.int8), requires_grad=False))
    with pytest.raises(UnsupportedLayoutError, match="q.weight"):
        scan_model(model)
    assert [lay.name for lay in scan_model(model, exclude=["q"])] == ["proj"]


@contextmanager
def fake_deepspeed(full_by_id, log):
    zero = pytypes.SimpleNamespace()

    @contextmanager
    def gathered(params, modifier_rank=None):
        assert modifier_rank is None
        assert len(params) == 1, "one parameter at a time"
        (p,) = params
        log.append(p.ds_id)
        p.data = full_by_id[p.ds_id]
        try:
            yield
        finally:
            p.data = torch.empty(0, dtype=p.dtype)

    zero.GatheredParameters = gathered
    module = pytypes.ModuleType("deepspeed")
    module.zero = zero
    sys.modules["deepspeed"] = module
    try:
        yield
    finally:
        del sys.modules["deepspeed"]


def test_zero3_parameters_are_gathered_one_at_a_time():
    """ZeRO-3: against a stub of deepspeed.zero.GatheredParameters (deepspeed itself is
    not installed here); the real interface is the same call."""
    model = tiny_models.llama(n_layers=2)
    reference = scan_model(model)
    full_by_id = {}
    for i, (_name, p) in enumerate(model.named_parameters()):
        full_by_id[i] = p.detach().clone()
        p.ds_id, p.ds_shape = i, tuple(p.shape)
        p.data = torch.empty(0, dtype=p.dtype)
    log = []
    with fake_deepspeed(full_by_id, log):
        sharded = scan_model(model)
    assert_same_scan(reference, sharded)
    matrices = [i for i, t in full_by_id.items() if t.dim() == 2]
    assert log == matrices  # each matrix gathered once, alone, none of the norms
