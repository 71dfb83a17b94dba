"""SpectrumCallback inside a real transformers.Trainer: a fixed selection, and re-targeting
after a rescan, where a layer that enters after the first epoch really trains from then on."""

from __future__ import annotations

import types

import pytest
import torch

pytest.importorskip("transformers")

import tiny_models
from transformers import Trainer, TrainerCallback, TrainingArguments

from spectrum_rs import SpectrumError
from spectrum_rs.integrations.torch import ScanMismatchError, candidate_parameters, scan_model
from spectrum_rs.integrations.transformers import SpectrumCallback, _check_dynamic_allowed

EMB_HEAD = {"model.embed_tokens.weight", "lm_head.weight"}


class Tokens(torch.utils.data.Dataset):
    def __init__(self, n=8):
        self.items = [{k: v[0] for k, v in tiny_models.batch(seed=i, size=1).items()} for i in range(n)]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


class Snapshots(TrainerCallback):
    """The weights at the start of each epoch and at the end of training."""

    def __init__(self):
        self.at = []

    def on_epoch_begin(self, args, state, control, model=None, **kw):
        self.at.append(tiny_models.snapshot(model))

    def on_train_end(self, args, state, control, model=None, **kw):
        self.at.append(tiny_models.snapshot(model))


def arguments(tmp_path, **kw):
    settings = dict(
        output_dir=str(tmp_path),
        num_train_epochs=2,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        weight_decay=0.1,
        lr_scheduler_type="constant",
        save_strategy="no",
        logging_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
        remove_unused_columns=False,
    )
    settings.update(kw)
    return TrainingArguments(**settings)


def selected_params(result, pct=25):
    by_name = {lay.name: lay for lay in result.layers}
    return {by_name[n].parameter for n in result.select(pct)}


def optimizer_names(trainer, model):
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)] for g in trainer.optimizer.param_groups for p in g["params"]}


def test_fixed_selection(llama4, tmp_path):
    result = scan_model(llama4)
    expected = selected_params(result) | EMB_HEAD
    callback = SpectrumCallback(result, 25)
    trainer = Trainer(
        model=llama4, args=arguments(tmp_path, num_train_epochs=1), train_dataset=Tokens(), callbacks=[callback]
    )
    assert tiny_models.trainable(llama4) == expected  # before the optimizer is built
    before = tiny_models.snapshot(llama4)
    trainer.train()
    assert optimizer_names(trainer, llama4) == expected  # the optimizer holds the selection only
    assert tiny_models.changed(before, tiny_models.snapshot(llama4)) == expected
    assert callback.summary.trainable == sum(p.numel() for n, p in llama4.named_parameters() if n in expected)
    assert any("spectrum/trainable_share" in e for e in trainer.state.log_history)
    assert callback.history == []


def test_rescan_each_epoch_retargets_for_real(llama4, tmp_path):
    model = llama4
    real = scan_model(model)
    stale = tiny_models.inverted(real)  # the first epoch trains the lowest-SNR layers
    callback = SpectrumCallback(stale, 25, rescan_every="epoch")
    snaps = Snapshots()
    trainer = Trainer(model=model, args=arguments(tmp_path), train_dataset=Tokens(), callbacks=[callback, snaps])
    candidates = {n for n, p in model.named_parameters() if any(p is c for c in candidate_parameters(model, real))}
    assert tiny_models.trainable(model) == candidates  # in on_init_end: the optimizer gets them all
    trainer.train()
    assert optimizer_names(trainer, model) == candidates

    assert len(callback.history) == 1  # after epoch 1; none after the last epoch
    report = callback.history[0]
    first, second = selected_params(stale), selected_params(callback.result)
    assert set(report.entered) == second - first and set(report.left) == first - second
    assert report.entered, "the rescan must move at least one layer"
    epoch1 = tiny_models.changed(snaps.at[0], snaps.at[1])
    epoch2 = tiny_models.changed(snaps.at[1], snaps.at[2])
    assert epoch1 == first | EMB_HEAD
    assert epoch2 == second | EMB_HEAD
    for name in report.entered:  # frozen through epoch 1, trains after it entered
        assert name not in epoch1 and name in epoch2
    for name in report.left:
        assert name in epoch1 and name not in epoch2
    entries = [e for e in trainer.state.log_history if "spectrum/rescan" in e]
    assert len(entries) == 1
    entry = entries[0]
    assert entry["spectrum/entered"] == report.entered_layers and entry["spectrum/left"] == report.left_layers
    assert entry["step"] == 2 and entry["epoch"] == pytest.approx(1.0)
    assert {k for k in entry if k.startswith("spectrum/snr_drift/")} == {f"spectrum/snr_drift/{t}" for t in real.types}


def test_rescan_every_n_steps(llama4, tmp_path):
    callback = SpectrumCallback(None, 50, rescan_every=1, scan_kwargs={"types": ["mlp.*"]})
    trainer = Trainer(
        model=llama4,
        args=arguments(tmp_path, num_train_epochs=1, max_steps=3),
        train_dataset=Tokens(),
        callbacks=[callback],
    )
    assert callback.result is not None and set(callback.result.types) == {
        "mlp.down_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
    }
    trainer.train()
    assert len(callback.history) == 2  # after steps 1 and 2, not after the last
    assert [e["step"] for e in trainer.state.log_history if "spectrum/rescan" in e] == [1, 2]
    assert set(callback.history[-1].selected) == {"mlp.down_proj", "mlp.gate_proj", "mlp.up_proj"}


def test_fails_closed(tmp_path):
    four, two = tiny_models.llama(n_layers=4), tiny_models.llama(n_layers=2)
    with pytest.raises(ScanMismatchError):
        Trainer(
            model=two, args=arguments(tmp_path), train_dataset=Tokens(), callbacks=[SpectrumCallback(scan_model(four))]
        )
    # An optimizer of one's own that lacks the candidates: refused before the first step.
    result = scan_model(four)
    head_only = torch.optim.AdamW([four.lm_head.weight], lr=1e-3)
    trainer = Trainer(
        model=four,
        args=arguments(tmp_path),
        train_dataset=Tokens(),
        optimizers=(head_only, None),
        callbacks=[SpectrumCallback(result, 25, rescan_every="epoch")],
    )
    before = tiny_models.snapshot(four)
    with pytest.raises(SpectrumError, match="not in the Trainer's optimizer"):
        trainer.train()
    assert tiny_models.changed(before, tiny_models.snapshot(four)) == set()
    with pytest.raises(SpectrumError, match="DeepSpeed"):
        _check_dynamic_allowed(types.SimpleNamespace(deepspeed="ds_config.json", world_size=1))
    with pytest.raises(SpectrumError, match="ddp_find_unused_parameters"):
        _check_dynamic_allowed(
            types.SimpleNamespace(deepspeed=None, world_size=2, fsdp="", ddp_find_unused_parameters=None)
        )
    for bad in (0, -1, "step", True, 1.5):
        with pytest.raises(ValueError):
            SpectrumCallback(result, rescan_every=bad)
