"""Functions executed on each rank by tests/test_shard.py (importable, so spawn can pickle them)."""

from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as dist

from scao_dist import SCAO, memory_report
from scao_dist.shard import checkpoint


class Bank(torch.nn.Module):
    """``layers`` independent regressions ``tanh(x W_i)`` (stacked outputs).

    Each weight sees the inputs directly, so its gradient covariance is well conditioned: a deep
    stack would make it ill-conditioned (condition ~1e8 for 4 layers of 24), and full-rank SOAP
    in fp32 turns rounding in those near-null directions into O(1) steps, in any implementation:
    a comparison of two runs would then measure that chaos, not the sharding.
    """

    def __init__(self, layers: int, d: int) -> None:
        super().__init__()
        self.lins = torch.nn.ModuleList(torch.nn.Linear(d, d) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.tanh(lin(x)) for lin in self.lins])


def make_model(layers: int = 4, d: int = 24, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return Bank(layers, d)


def global_batches(
    steps: int, n: int = 96, d: int = 24, seed: int = 1, layers: int = 12
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(x, y) per step, y holding one target per regression (enough for up to ``layers``)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(layers, d, d, generator=g) / d**0.5
    out = []
    for _ in range(steps):
        x = torch.randn(n, d, generator=g)
        out.append((x, torch.tanh(x @ w)))
    return out


def train(model, opt, batches, rank=0, world=1):
    """Each rank takes its equal slice of every global batch (mean loss -> averaged grads)."""
    losses = []
    for x, y in batches:
        xs, ys = x.chunk(world)[rank], y.chunk(world, dim=1)[rank]
        opt.zero_grad()
        out = model(xs)
        loss = (out - ys[: out.shape[0]]).square().mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def params_of(model):
    return [p.detach().clone() for p in model.parameters()]


def run_sharded(rank, world, layers, steps, kwargs):
    model = make_model(layers)
    opt = SCAO(model.parameters(), lr=1e-2, min_precond_dim=2, **kwargs)
    train(model, opt, global_batches(steps), rank, world)
    rep = memory_report(opt)
    return {
        "params": params_of(model),
        "bytes": rep.total,
        "owned": sorted(opt.owned_blocks()),
        "sent": opt.comm.bytes_sent,
    }


def run_sharded_device_inputs(rank, world, layers, steps, captured):
    """``run_sharded`` with int8 states, the group steps through scao_dist.capture's device inputs
    (``GroupGraphs(record=False)``: no graphs on CPU) when ``captured``."""
    from scao_dist.capture import GroupGraphs

    model = make_model(layers)
    opt = SCAO(model.parameters(), lr=1e-2, min_precond_dim=2, precond_freq=4)
    if captured:
        GroupGraphs(opt.groups, torch.device("cpu"), record=False).install(opt)
    train(model, opt, global_batches(steps), rank, world)
    counts = opt._graphs[torch.device("cpu")].counts if captured else {}
    return {"params": params_of(model), "owned": sorted(opt.owned_blocks()), "counts": counts}


def run_sharded_losses(rank, world, layers, steps, kwargs):
    kwargs = {k: (getattr(torch, v) if k == "grad_comm_dtype" else v) for k, v in kwargs.items()}
    model = make_model(layers)
    opt = SCAO(model.parameters(), lr=1e-2, min_precond_dim=2, **kwargs)
    return train(model, opt, global_batches(steps), rank, world)


def run_resume(rank, world, ckpt_dir, mode, steps_before, steps_after, kwargs):
    """mode 'save': train, write both checkpoint kinds; 'load': load them and continue."""
    model = make_model(4)
    opt = SCAO(model.parameters(), lr=1e-2, min_precond_dim=2, **kwargs)
    batches = global_batches(steps_before + steps_after)
    if mode == "save":
        train(model, opt, batches[:steps_before], rank, world)
        full = opt.state_dict()  # collective: gathered on every rank
        if rank == 0:
            torch.save({"model": model.state_dict(), "opt": full}, os.path.join(ckpt_dir, "full.pt"))
        checkpoint.save(os.path.join(ckpt_dir, "dcp"), model, opt, extra={"step": steps_before})
        dist.barrier()
        train(model, opt, batches[steps_before:], rank, world)
        return params_of(model)
    out = {}
    ck = torch.load(os.path.join(ckpt_dir, "full.pt"), weights_only=True)
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["opt"])
    train(model, opt, batches[steps_before:], rank, world)
    out["full"] = params_of(model)
    model2 = make_model(4, seed=5)
    opt2 = SCAO(model2.parameters(), lr=1e-2, min_precond_dim=2, **kwargs)
    extra = checkpoint.load(os.path.join(ckpt_dir, "dcp"), model2, opt2)
    assert extra == {"step": steps_before}
    train(model2, opt2, batches[steps_before:], rank, world)
    out["dcp"] = params_of(model2)
    return out


def run_mismatch(rank, world):
    model = make_model(2, d=24 if rank == 0 else 16)
    SCAO(model.parameters(), lr=1e-2)


def run_killed(rank, world, die_at):
    model = make_model(2)
    opt = SCAO(model.parameters(), lr=1e-2, min_precond_dim=2)
    for step, (x, y) in enumerate(global_batches(200)):
        if rank == 1 and step == die_at:
            os._exit(3)
        xs, ys = x.chunk(world)[rank], y.chunk(world, dim=1)[rank]
        opt.zero_grad()
        out = model(xs)
        (out - ys[: out.shape[0]]).square().mean().backward()
        opt.step()
    return "finished"


def run_nan_on_one_rank(rank, world):
    model = make_model(2)
    opt = SCAO(model.parameters(), lr=1e-2, min_precond_dim=2, max_consecutive_skips=3)
    for x, y in global_batches(10):
        xs, ys = x.chunk(world)[rank], y.chunk(world, dim=1)[rank]
        opt.zero_grad()
        out = model(xs)
        (out - ys[: out.shape[0]]).square().mean().backward()
        if rank == 1:
            next(model.parameters()).grad.fill_(float("nan"))
        opt.step()
    return "finished"


def run_overlap(rank, world, steps, accumulate):
    """overlap_comm=True (buckets launched from backward hooks) against the plain path."""
    out = {}
    for overlap in (False, True):
        model = make_model(4)
        opt = SCAO(model.parameters(), lr=1e-2, min_precond_dim=2, quantize=False, overlap_comm=overlap,
                   bucket_mb=0.004)  # fmt: skip  # several buckets
        for x, y in global_batches(steps):
            xs, ys = x.chunk(world)[rank], y.chunk(world, dim=1)[rank]
            opt.zero_grad()
            halves = list(zip(xs.chunk(2), ys.chunk(2, dim=1))) if accumulate else [(xs, ys)]
            for j, (xa, ya) in enumerate(halves):
                ctx = opt.no_sync() if (overlap and j < len(halves) - 1) else contextlib.nullcontext()
                with ctx:
                    o = model(xa)
                    ((o - ya[: o.shape[0]]).square().mean() / len(halves)).backward()
            opt.step()
        out[overlap] = (params_of(model), opt.comm.bytes_sent, len(opt.comm.buckets))
    return out


def run_overlap_misuse(rank, world):
    model = make_model(2)
    _opt = SCAO(model.parameters(), lr=1e-2, min_precond_dim=2, overlap_comm=True)  # its hooks do the work
    x, y = global_batches(1)[0]
    xs, ys = x.chunk(world)[rank], y.chunk(world, dim=1)[rank]
    for _ in range(2):  # accumulation without no_sync()
        o = model(xs)
        (o - ys[: o.shape[0]]).square().mean().backward()


def run_ddp_from_model(rank, world, steps):
    """SCAO.from_model on a DDP-wrapped model: grad_sync='external', same weights as plain sharding."""
    from torch.nn.parallel import DistributedDataParallel

    out = {}
    for wrap in (False, True):
        model = make_model(3)
        net = DistributedDataParallel(model) if wrap else model
        opt = SCAO.from_model(net, lr=1e-2, min_precond_dim=2, quantize=False)
        train(net, opt, global_batches(steps), rank, world)
        out[wrap] = (opt.comm.grad_sync, params_of(model), opt.comm.bytes_sent)
    return out
