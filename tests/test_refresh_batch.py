"""Refreshes of the blocks of a group that fall due together run as one batch.

The batch is a performance device only: it must give every block what a refresh of that block
alone gives, and cost (in dispatched operations) about what one block's refresh costs.
"""

from __future__ import annotations

import pytest
import torch
from dist_workers import global_batches, make_model, params_of, train
from torch.utils._python_dispatch import TorchDispatchMode

from scao_dist import SCAO
from scao_dist.groups import KronGroup
from scao_dist.shard.plan import make_plan, refresh_batches
from scao_dist.shard.refresh import RefreshScheduler

STREAM = dict(full_factor_dim=16, rank_max=8, oversample=4)  # 24-wide sides: Nystrom, truncated
DENSE: dict = {}


def _record_submits(monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """The blocks of every batch the scheduler is given from now on (a list filled as it runs)."""
    submit, seen = RefreshScheduler.submit, []

    def spy(self, grp, idx, hp, step):
        seen.append(list(idx))
        submit(self, grp, idx, hp, step)

    monkeypatch.setattr(RefreshScheduler, "submit", spy)
    return seen


def _one_by_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """The twin: the scheduler refreshes each due block on its own."""
    submit = RefreshScheduler.submit

    def single(self, grp, idx, hp, step):
        for i in idx:
            submit(self, grp, [i], hp, step)

    monkeypatch.setattr(RefreshScheduler, "submit", single)


@pytest.mark.parametrize("sides", [STREAM, DENSE], ids=["stream", "dense"])
@pytest.mark.parametrize("quantize", [False, True], ids=["fp32", "int8"])
def test_batched_refreshes_equal_one_block_at_a_time(monkeypatch, sides, quantize) -> None:
    """Same schedule (every block refreshes at the same steps), batched against one by one."""

    def run() -> tuple[list[torch.Tensor], dict]:
        model = make_model(4)
        opt = SCAO(model.parameters(), lr=1e-2, min_precond_dim=2, stagger_refresh=False, precond_freq=4,
                   quantize=quantize, **sides)  # fmt: skip
        train(model, opt, global_batches(14))
        return params_of(model), dict(opt.counters)

    batched, c_batched = run()
    _one_by_one(monkeypatch)
    single, c_single = run()
    assert c_batched["refreshes"] == c_single["refreshes"] > 4 * 2
    assert c_batched.get("basis_failures", 0) == c_single.get("basis_failures", 0) == 0
    for a, b in zip(batched, single):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


class _CountOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("shape", [(48, 40), (96, 40)], ids=["dense", "stream+dense"])
def test_a_batch_costs_about_one_refresh(shape: tuple[int, int]) -> None:
    """Snapshot, compute and swap of 4 blocks dispatch at most 15% more operations than of 1 block
    (they were 4 times as many when each block refreshed on its own)."""
    torch.manual_seed(0)
    ws = [torch.nn.Parameter(torch.randn(shape)) for _ in range(4)]
    opt = SCAO(ws, lr=1e-3, refresh_lag=0, full_factor_dim=64, rank_max=16, oversample=4)
    for _ in range(3):
        for w in ws:
            w.grad = torch.randn(shape) @ torch.diag(torch.logspace(0, -2, shape[1]))
        opt.step()
    grp = next(g for g in opt.groups if isinstance(g, KronGroup))
    hp = opt._hyper(grp)
    ops = {}
    for idx in ([0], [0, 1, 2, 3]):
        with _CountOps() as c:
            (refresh,) = grp.compute_refresh(grp.refresh_inputs(idx), hp)
            grp.apply_bases(refresh)
        assert refresh.idx == idx and not refresh.failures
        ops[len(idx)] = c.ops
    assert ops[4] <= 1.15 * ops[1], ops


def test_a_failed_block_keeps_its_basis_and_the_others_refresh() -> None:
    """A non-finite factor in one block of a batch: that block keeps its old basis (counted), the
    others get new ones."""
    torch.manual_seed(0)
    ws = [torch.nn.Parameter(torch.randn(48, 40)) for _ in range(3)]
    opt = SCAO(ws, lr=1e-3, refresh_lag=0, full_factor_dim=64, quantize=False)
    for _ in range(3):
        for w in ws:
            w.grad = torch.randn(48, 40)
        opt.step()
    grp = next(g for g in opt.groups if isinstance(g, KronGroup))
    before = grp.t["L.q"].clone()
    snap = grp.refresh_inputs([0, 1, 2])
    snap["sides"][0]["fac"]["L.fac"][1, 3, 3] = float("nan")
    out = grp.compute_refresh(snap, opt._hyper(grp))
    assert [r.idx for r in out] == [[0, 2], [1]]
    assert out[1].bases[0] is None and out[1].failures == ["dense refresh: non-finite factor or basis"]
    for r in out:
        grp.apply_bases(r)
    assert torch.equal(grp.t["L.q"][1], before[1])
    assert not torch.equal(grp.t["L.q"][0], before[0]) and not torch.equal(grp.t["L.q"][2], before[2])
    assert torch.isfinite(grp.t["L.q"]).all()


def test_blocks_of_one_shape_share_a_phase_and_phases_stay_balanced() -> None:
    model = make_model(12)
    opt = SCAO(model.parameters(), min_precond_dim=2)
    specs = opt.specs
    kw = dict(rank_max=[256] * len(specs), precond_freq=[10] * len(specs), quantize=True, stagger=True)
    plan = make_plan(specs, 3, **kw)
    batches = refresh_batches(specs, plan.cost, [10] * len(specs), [256] * len(specs))
    kron = sorted(b for _, chunk in batches for b in chunk)
    assert kron == [b for b, s in enumerate(specs) if s.kind == "kron"]
    for _, chunk in batches:
        assert len({plan.phase[b] for b in chunk}) == 1
        assert len({specs[b].key for b in chunk}) == 1
    # 12 equal blocks at 3 phases' worth per batch: 4 batches of 3 on 4 different phases
    assert sorted(len(c) for _, c in batches) == [3, 3, 3, 3]
    assert len({plan.phase[c[0]] for _, c in batches}) == 4


def test_gradient_release_refreshes_in_the_same_batches(monkeypatch) -> None:
    """With ``grad_release`` the hooks step one parameter at a time; the refreshes that fall due
    are still submitted per group at the end of the step, in the batches of the plain path, and
    the weights come out the same."""
    submit = RefreshScheduler.submit

    def run(release: bool) -> tuple[list[list[int]], list[torch.Tensor]]:
        monkeypatch.setattr(RefreshScheduler, "submit", submit)
        sizes = _record_submits(monkeypatch)
        model = make_model(4)
        opt = SCAO(model.parameters(), lr=1e-2, min_precond_dim=2, precond_freq=3, grad_release=release)
        train(model, opt, global_batches(10))
        return sizes, params_of(model)

    plain, p_plain = run(False)
    released, p_released = run(True)
    assert released == plain and max(len(b) for b in plain) == 4
    for a, b in zip(p_plain, p_released):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("sides", [STREAM, DENSE], ids=["stream", "dense"])
def test_a_checkpoint_with_a_batch_pending_resumes_bit_exact(sides) -> None:
    """Saved right after a batch of refreshes was submitted (swapped in at the next step): the
    resumed run recomputes the pending blocks' state one by one at the swap and continues with
    the same bits as the run that never stopped."""
    import io

    data = global_batches(16)
    kw = dict(lr=1e-2, min_precond_dim=2, precond_freq=4, stagger_refresh=False, **sides)
    model = make_model(3)
    opt = SCAO(model.parameters(), **kw)
    saved = None
    for t, batch in enumerate(data):
        train(model, opt, [batch])
        if saved is None and any(len(p.idx) > 1 for p in opt.refresher.pending):
            buf = io.BytesIO()
            torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
            saved = t + 1
    assert saved is not None and saved < len(data) - 2
    buf.seek(0)
    ck = torch.load(buf, weights_only=True)
    fresh = make_model(3, seed=1)
    fresh.load_state_dict(ck["model"])
    fresh_opt = SCAO(fresh.parameters(), **kw)
    fresh_opt.load_state_dict(ck["opt"])
    batches = [p.idx for p in fresh_opt.refresher.pending]
    assert batches and max(len(b) for b in batches) > 1  # the batch came back as one batch
    train(fresh, fresh_opt, data[saved:])
    for a, b in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(a, b)


def test_refresh_batches_respect_the_working_set_cap(monkeypatch) -> None:
    """A deep stack of one shape is cut into batches whose estimated working set fits the cap."""
    from scao_dist.shard import plan as plan_mod

    model = make_model(12)
    specs = SCAO(model.parameters(), min_precond_dim=2).specs
    kron = [b for b, s in enumerate(specs) if s.kind == "kron"]
    per_block = plan_mod.refresh_bytes(specs[kron[0]], 256)
    monkeypatch.setattr(plan_mod, "REFRESH_BATCH_BYTES", 2 * per_block)
    cost = [1.0] * len(specs)
    batches = refresh_batches(specs, cost, [1] * len(specs), [256] * len(specs))  # by cost alone: one batch
    assert sorted(b for _, c in batches for b in c) == kron
    assert max(len(c) for _, c in batches) == 2


def test_batches_that_share_a_phase_are_submitted_apart(monkeypatch) -> None:
    """Blocks of one group due at the same step but in different batches of the plan (here: every
    phase 0, and a working-set cap of two blocks) refresh as separate batches."""
    from scao_dist.shard import plan as plan_mod

    spec = SCAO(make_model(1).parameters(), min_precond_dim=2).specs[0]
    monkeypatch.setattr(plan_mod, "REFRESH_BATCH_BYTES", 2 * plan_mod.refresh_bytes(spec, 128))
    sizes = _record_submits(monkeypatch)
    model = make_model(4)
    opt = SCAO(model.parameters(), lr=1e-2, min_precond_dim=2, precond_freq=3, stagger_refresh=False)
    train(model, opt, global_batches(8))
    assert sizes and all(len(b) == 2 for b in sizes)
    assert {tuple(b) for b in sizes} == {(0, 1), (2, 3)}
