"""One process of the cross-process statistics test (``test_distributed.py``).

``python sync_worker.py RANK WORLD INIT_FILE OUT_FILE`` joins a gloo group, runs every case of
:data:`CASES` with ``sync=True`` on its shard of a batch shared by all processes and saves the
outputs, input gradients, parameter gradients and buffers. The test runs the same cases in one
process on the concatenated batch and compares. Both sides build inputs and layers from here.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from normapps import norm

C = 8
STEPS = 3
CASES: dict[str, tuple[dict, tuple[int, ...]]] = {
    # name: (build kwargs, per-process batch sizes; uneven where the method allows it)
    "bn": ({}, (6, 3)),
    "ghostbn": ({"virtual_batch_size": 2}, (4, 4)),
    "brn": ({"rmax": 1.5, "dmax": 0.5, "warmup_steps": 0, "ramp_steps": 1}, (6, 3)),
    "bgn": ({"groups": 4}, (6, 3)),
    "switchnorm": ({}, (6, 3)),
    "bin": ({}, (6, 3)),
    "dbn": ({"group_size": 4}, (6, 3)),
    "pcawhiten": ({"group_size": 4}, (6, 3)),
    "cdwhiten": ({"group_size": 4, "coloring": True}, (6, 3)),
    "iternorm": ({"group_size": 4, "T": 5}, (6, 3)),
}


def build(name: str, sync: bool) -> nn.Module:
    """The case's layer with parameters drawn from a fixed seed."""
    kwargs = dict(CASES[name][0], sync=True) if sync else dict(CASES[name][0])
    if name == "ghostbn" and not sync:  # one process: virtual batches pool the processes' k-th chunks
        kwargs["virtual_batch_size"] *= len(CASES[name][1])
    layer = norm.build(name, C, **kwargs)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=generator))
    return layer


def batch(name: str, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The concatenated input and upstream gradient of ``step`` (shifted and scaled, so the batch
    statistics differ from the running ones)."""
    generator = torch.Generator().manual_seed(100 + step)
    n = sum(CASES[name][1])
    x = 2.0 + 3.0 * torch.randn(n, C, 3, 3, generator=generator, dtype=torch.float64).float()
    return x, torch.randn(x.shape, generator=generator)


def order(name: str) -> torch.Tensor:
    """Order of the concatenated batch for the one-process reference: for ghostbn, the k-th
    virtual batch of each process next to one another; otherwise the processes' shards in turn."""
    sizes = CASES[name][1]
    starts = [sum(sizes[:r]) for r in range(len(sizes))]
    if name != "ghostbn":
        return torch.arange(sum(sizes))
    vbs = CASES[name][0]["virtual_batch_size"]
    return torch.cat([torch.arange(s + k, s + k + vbs) for k in range(0, sizes[0], vbs) for s in starts])


def shard(t: torch.Tensor, name: str, rank: int) -> torch.Tensor:
    sizes = CASES[name][1]
    start = sum(sizes[:rank])
    return t[start:start + sizes[rank]]


def run(layer: nn.Module, inputs: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, list]:
    """Train-mode steps (output, input gradient, parameter gradients per step), then buffers and an
    eval-mode output on the first input."""
    record: dict[str, list] = {"y": [], "dx": [], "dp": []}
    layer.train()
    for x, g in inputs:
        x = x.clone().requires_grad_(True)
        layer.zero_grad()
        y = layer(x)
        y.backward(g)
        record["y"].append(y.detach())
        record["dx"].append(x.grad)
        record["dp"].append({n: p.grad.clone() for n, p in layer.named_parameters()})
    record["buffers"] = [{n: b.clone() for n, b in layer.named_buffers()}]
    layer.eval()
    with torch.no_grad():
        record["eval"] = [layer(inputs[0][0])]
    return record


def main(rank: int, world: int, init_file: str, out_file: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    results = {}
    for name in CASES:
        inputs = [tuple(shard(t, name, rank) for t in batch(name, step)) for step in range(STEPS)]
        results[name] = run(build(name, sync=True), inputs)
    # a torch model made to synchronize by convert(model, sync=True)
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(C, C, 1), nn.BatchNorm2d(C), nn.ReLU())
    report = norm.convert(model, sync=True)
    results["convert"] = run(model, [tuple(shard(t, "bn", rank) for t in batch("bn", s)) for s in range(STEPS)])
    results["convert"]["report"] = [str(report)]
    torch.save(results, out_file)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
