"""Statistics across processes: two gloo processes with ``sync=True`` give what one process gives
on the concatenated batch (outputs, input and parameter gradients, running statistics, eval)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import sync_worker
import torch
import torch.distributed as dist
from torch import nn

from normapps import norm

WORLD = 2


@pytest.fixture(scope="module")
def synced(tmp_path_factory) -> dict:
    """Run the worker in two processes once; return their results by rank."""
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    folder = tmp_path_factory.mktemp("sync")
    outs = [folder / f"rank{r}.pt" for r in range(WORLD)]
    procs = [subprocess.Popen([sys.executable, sync_worker.__file__, str(r), str(WORLD), str(folder / "init"),
                               str(outs[r])], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(WORLD)]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log
    return {r: torch.load(outs[r]) for r in range(WORLD)}


def reference(name: str, model: nn.Module) -> dict:
    """The case run in this process on the concatenated batch, mapped back to the processes' order."""
    perm = sync_worker.order(name)
    inputs = [tuple(t[perm] for t in sync_worker.batch(name, s)) for s in range(sync_worker.STEPS)]
    record = sync_worker.run(model, inputs)
    for key in ("y", "dx", "eval"):
        unpermuted = []
        for t in record[key]:
            out = torch.empty_like(t)
            out[perm] = t
            unpermuted.append(out)
        record[key] = unpermuted
    return record


def compare(name: str, ref: dict, synced: dict) -> None:
    close = dict(rtol=1e-4, atol=2e-5)
    for rank in range(WORLD):
        got = synced[rank]
        for key in ("y", "dx", "eval"):
            for step, (r, g) in enumerate(zip(ref[key], got[key])):
                where = f"{name} {key} step {step} rank {rank}"
                torch.testing.assert_close(g, sync_worker.shard(r, name, rank), **close, msg=lambda m, w=where: f"{w}: {m}")
        for b, value in ref["buffers"][0].items():
            where = f"{name} {b} rank {rank}"
            torch.testing.assert_close(got["buffers"][0][b], value, **close, msg=lambda m, w=where: f"{w}: {m}")
    for step, grads in enumerate(ref["dp"]):
        for p, value in grads.items():
            total = sum(synced[r]["dp"][step][p] for r in range(WORLD))
            where = f"{name} grad {p} step {step}"
            torch.testing.assert_close(total, value, **close, msg=lambda m, w=where: f"{w}: {m}")


@pytest.mark.parametrize("name", list(sync_worker.CASES))
def test_synchronized_statistics_equal_one_process_on_the_concatenated_batch(synced, name):
    compare(name, reference(name, sync_worker.build(name, sync=False)), {r: synced[r][name] for r in range(WORLD)})


def test_convert_with_sync_synchronizes_a_torch_model(synced):
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(sync_worker.C, sync_worker.C, 1), nn.BatchNorm2d(sync_worker.C), nn.ReLU())
    compare("bn", reference("bn", model), {r: synced[r]["convert"] for r in range(WORLD)})
    assert "BatchNorm2d" in synced[0]["convert"]["report"][0] and "1 normalization layers" in synced[0]["convert"]["report"][0]


def test_sync_without_a_process_group_computes_local_statistics():
    x = torch.randn(6, 4, 3, 3)
    for name, kwargs in (("bn", {}), ("bgn", {"groups": 2}), ("switchnorm", {}), ("brn", {})):
        torch.manual_seed(0)
        plain = norm.build(name, 4, **kwargs)
        torch.manual_seed(0)
        synced_layer = norm.build(name, 4, sync=True, **kwargs)
        torch.testing.assert_close(synced_layer(x), plain(x))
        assert "sync=True" in repr(synced_layer)


def test_convert_sync_keeps_our_methods_and_replaces_torch_batchnorm():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), norm.build("ghostbn", 4, virtual_batch_size=4),
                          norm.build("gn", 4, groups=2))
    model[1].running_mean.fill_(0.5)
    report = norm.convert(model, sync=True)
    assert type(model[1]).__name__ == "BatchNorm" and model[1].sync
    torch.testing.assert_close(model[1].running_mean, torch.full((4,), 0.5))
    assert model[2].sync and type(model[2]).__name__ == "GhostBatchNorm"
    assert not model[3].sync  # group norm has no batch statistics to pool
    assert len(report) == 2
    converted = norm.convert(nn.Sequential(nn.BatchNorm2d(4)), "brn", sync=True).model
    assert converted[0].sync


def test_sync_errors_name_what_is_wrong():
    with pytest.raises(TypeError, match="sync=True"):
        norm.convert(nn.Sequential(nn.BatchNorm2d(4)))
    with pytest.raises(ValueError, match="per sample"):
        norm.Normalize("layer", "standardize", num_features=4, sync=True)
    with pytest.raises(ValueError, match="mad"):
        norm.build("l1bn", 4, sync=True) if "sync" in norm.signature("l1bn").parameters \
            else norm.Normalize("batch", norm.L1(), num_features=4, sync=True)
