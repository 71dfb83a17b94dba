"""One of two gloo processes on the CPU for test_fsdp_gloo.py:
``python fsdp_worker.py OUT PORT RANK`` (the test starts ranks 0 and 1).

Each rank builds the same tiny Llama, shards it with FSDP2 ``fully_shard`` (and FSDP1
``use_orig_params=True``), scans it with ``scan_model``, freezes, trains, re-targets and
trains again, and writes what it saw to ``OUT.<rank>`` (JSON) for the test to check."""

from __future__ import annotations

import json
import os
import sys
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)


def rows(result):
    return [[lay.name, lay.type, lay.snr, lay.tied_to, lay.parameter] for lay in result.layers]


def full_snapshot(model):
    return {n: p.full_tensor().detach().clone() for n, p in model.named_parameters()}


def tiny_models_named(model):
    from spectrum_rs.integrations.torch.tensors import _clean

    return [(_clean(n), p) for n, p in model.named_parameters()]


def changed(a, b):
    import torch

    return sorted(n for n in a if not torch.equal(a[n], b[n]))


def rank_main(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    report = {"rank": rank}
    try:
        import tiny_models

        from spectrum_rs.integrations.torch import candidate_parameters, freeze, retarget, scan_model

        reference = scan_model(tiny_models.llama(n_layers=2), distributed=False)
        reference_tied = scan_model(tiny_models.llama(n_layers=2, tie=True), distributed=False)
        report["reference"] = rows(reference)
        report["reference_tied"] = rows(reference_tied)

        # FSDP2: fully_shard each decoder layer and the root (parameters become DTensors).
        try:
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard
        except ImportError as e:
            report["fsdp2_unavailable"] = f"{type(e).__name__}: {e}"
        else:
            mesh = init_device_mesh("cpu", (world,))

            def sharded(tie=False):
                m = tiny_models.llama(n_layers=2, tie=tie)
                for layer in m.model.layers:
                    fully_shard(layer, mesh=mesh)
                fully_shard(m, mesh=mesh)
                return m

            tied = sharded(tie=True)
            report["fsdp2_tied"] = rows(scan_model(tied))
            model = sharded()
            from torch.distributed.tensor import DTensor

            assert all(isinstance(p, DTensor) for p in model.parameters())
            calls = []
            original = DTensor.full_tensor

            def counting(self, *a, **kw):
                calls.append(tuple(self.shape))
                return original(self, *a, **kw)

            DTensor.full_tensor = counting
            try:
                result = scan_model(model)
            finally:
                DTensor.full_tensor = original
            report["fsdp2"] = rows(result)
            report["fsdp2_gathers"] = calls

            stale = tiny_models.inverted(result)
            opt = torch.optim.AdamW(candidate_parameters(model, result), lr=1e-2, weight_decay=0.1)
            report["fsdp2_total"] = freeze(model, stale, 50).total
            s0 = full_snapshot(model)
            for i in range(2):
                loss = model(**tiny_models.batch(seed=10 * rank + i)).loss
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            s1 = full_snapshot(model)
            rep = retarget(model, opt, result, 50, previous=stale)
            for i in range(2):
                loss = model(**tiny_models.batch(seed=10 * rank + 5 + i)).loss
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            s2 = full_snapshot(model)
            report["first"] = sorted({lay.parameter for lay in stale.layers if lay.name in set(stale.select(50))})
            report["second"] = sorted({lay.parameter for lay in result.layers if lay.name in set(result.select(50))})
            report["entered"], report["left"] = sorted(rep.entered), sorted(rep.left)
            report["changed_1"], report["changed_2"] = changed(s0, s1), changed(s1, s2)

        # FSDP1 with use_orig_params=True, one unit per decoder layer.
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy
        from transformers.models.llama.modeling_llama import LlamaDecoderLayer

        wrapped = FSDP(
            tiny_models.llama(n_layers=2),
            use_orig_params=True,
            device_id=torch.device("cpu"),
            auto_wrap_policy=ModuleWrapPolicy({LlamaDecoderLayer}),
        )
        summons = []
        original_summon = FSDP.summon_full_params

        def recording(module, *a, **kw):
            summons.append([type(module.module).__name__, kw.get("recurse", True)])
            return original_summon(module, *a, **kw)

        FSDP.summon_full_params = staticmethod(recording)
        try:
            report["fsdp1"] = rows(scan_model(wrapped))
        finally:
            FSDP.summon_full_params = staticmethod(original_summon)
        report["fsdp1_summons"] = summons

        # FSDP1: freeze after wrapping, train, and compare the full weights.
        def fsdp1_snapshot():
            with FSDP.summon_full_params(wrapped, writeback=False):
                return {n: p.detach().clone() for n, p in tiny_models_named(wrapped)}

        result1 = scan_model(wrapped)
        summary1 = freeze(wrapped, result1, 50)
        report["fsdp1_total"] = summary1.total
        report["reference_total"] = sum(p.numel() for p in tiny_models.llama(n_layers=2).parameters())
        opt1 = torch.optim.AdamW(wrapped.parameters(), lr=1e-2, weight_decay=0.1)
        t0 = fsdp1_snapshot()
        for i in range(2):
            loss = wrapped(**tiny_models.batch(seed=20 * rank + i)).loss
            loss.backward()
            opt1.step()
            opt1.zero_grad(set_to_none=True)
        report["fsdp1_selected"] = sorted(
            {lay.parameter for lay in result1.layers if lay.name in set(result1.select(50))}
        )
        report["fsdp1_changed"] = changed(t0, fsdp1_snapshot())
    except Exception:
        report["error"] = traceback.format_exc()
    with open(f"{out}.{rank}", "w") as f:
        json.dump(report, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    rank_main(int(sys.argv[3]), 2, int(sys.argv[2]), sys.argv[1])
