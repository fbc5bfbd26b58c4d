"""Functions executed on each rank by tests/test_shard.py (importable, so spawn can pickle them)."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from scao_dist import SCAO, memory_report
from scao_dist.shard import checkpoint


def make_model(layers: int = 4, d: int = 24, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    mods: list[torch.nn.Module] = []
    for _ in range(layers):
        mods += [torch.nn.Linear(d, d), torch.nn.Tanh()]
    return torch.nn.Sequential(*mods)


def global_batches(steps: int, n: int = 96, d: int = 24, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, d, generator=g)
    out = []
    for _ in range(steps):
        x = torch.randn(n, d, generator=g)
        out.append((x, torch.tanh(x @ w)))
    return out


def train(model, opt, batches, rank=0, world=1):
    """Each rank takes its equal slice of every global batch (mean loss -> averaged grads)."""
    losses = []
    for x, y in batches:
        xs, ys = x.chunk(world)[rank], y.chunk(world)[rank]
        opt.zero_grad()
        loss = (model(xs) - ys).square().mean()
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


def run_sharded_losses(rank, world, layers, steps, kwargs):
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
        xs, ys = x.chunk(world)[rank], y.chunk(world)[rank]
        opt.zero_grad()
        (model(xs) - ys).square().mean().backward()
        opt.step()
    return "finished"


def run_nan_on_one_rank(rank, world):
    model = make_model(2)
    opt = SCAO(model.parameters(), lr=1e-2, min_precond_dim=2, max_consecutive_skips=3)
    for x, y in global_batches(10):
        xs, ys = x.chunk(world)[rank], y.chunk(world)[rank]
        opt.zero_grad()
        (model(xs) - ys).square().mean().backward()
        if rank == 1:
            next(model.parameters()).grad.fill_(float("nan"))
        opt.step()
    return "finished"
