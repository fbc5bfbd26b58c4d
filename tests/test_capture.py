"""The captured step's machinery (``scao_dist.capture``) against eager steps, on CPU.

CUDA graphs need a GPU (``bench/capture_check.py`` replays them there, bit for bit against eager
steps). What the CPU can check is everything around the graph: the gradients copied into fixed
buffers, lr / bias corrections / dither seeds read from device tables (the host hands the update
NaN for lr and weight decay, so any stale host value would poison the weights), the Gram
inverses prepared before the step, the key that forces a new capture, the chunked runs, the
refreshes due. ``GroupGraphs(record=False)`` runs the recorded body eagerly at every step; the
weights and the whole state must equal a plain optimizer's bit for bit.
"""

from __future__ import annotations

import contextlib
import copy
import math

import pytest
import torch

from scao_dist import SCAO
from scao_dist.capture import GroupGraphs
from scao_dist.groups import AdamGroup, KronGroup
from scao_dist.kernels import scalars


def _model(dtype: torch.dtype) -> list[torch.nn.Parameter]:
    torch.manual_seed(0)
    shapes = [(48, 40), (48, 40), (20, 48), (40,), (40,), (12, 6)]
    return [torch.nn.Parameter((torch.randn(s) * 0.3).to(dtype)) for s in shapes]


def _grads(params: list[torch.nn.Parameter], gen: torch.Generator) -> None:
    for p in params:
        if p.dim() == 2:  # low rank plus noise: truncated bases with a complement to train
            m, n = p.shape
            g = torch.randn(m, 3, generator=gen) @ torch.randn(3, n, generator=gen)
            g = g + 0.05 * torch.randn(m, n, generator=gen)
        else:
            g = torch.randn(p.shape, generator=gen)
        p.grad = g.to(p.dtype)


def _opt(params: list[torch.nn.Parameter], captured: bool, **kw) -> tuple[SCAO, GroupGraphs]:
    """The tests' SCAO (refreshes every 2 steps, in line; stream sides above 24) and a
    ``GroupGraphs(record=False)``, installed as the optimizer's when ``captured``."""
    kw = {"refresh_lag": 0, "precond_freq": 2, "full_factor_dim": 24, "oversample": 4, "rank_max": 12, **kw}
    opt = SCAO(params, lr=1e-2, **kw)
    graphs = GroupGraphs(opt.groups, torch.device("cpu"), record=False)
    if captured:
        graphs.install(opt)
    return opt, graphs


def _run(captured: bool, dtype: torch.dtype, steps: int, **kw) -> tuple[list[torch.Tensor], SCAO]:
    params = _model(dtype)
    opt, _ = _opt(params, captured, **kw)
    gen = torch.Generator().manual_seed(1)
    for t in range(steps):
        for g in opt.param_groups:  # a schedule: lr changes at every step
            g["lr"] = 1e-2 * (0.5 + 0.5 * math.cos(t / steps * math.pi))
        _grads(params, gen)
        opt.step()
    return [p.detach().clone() for p in params], opt


def _states_equal(a: SCAO, b: SCAO) -> None:
    sa, sb = a.state_dict()["state"], b.state_dict()["state"]
    assert sa.keys() == sb.keys()
    for pid in sa:
        for blk in sa[pid]:
            for k, v in sa[pid][blk].items():
                assert torch.equal(v, sb[pid][blk][k]), (pid, blk, k)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_device_inputs_step_equals_eager(dtype: torch.dtype) -> None:
    w_eager, eager = _run(False, dtype, 14)
    w_cap, cap = _run(True, dtype, 14)
    for a, b in zip(w_eager, w_cap):
        assert torch.isfinite(b.float()).all()
        assert torch.equal(a, b)
    _states_equal(eager, cap)
    graphs = cap._graphs[torch.device("cpu")]
    kinds = {type(g) for g in graphs.groups if id(g) in graphs.entries}
    assert kinds == {KronGroup, AdamGroup}  # both group kinds went through the device-input path
    assert graphs.counts["eager"] >= 12 * len(graphs.entries) // 2
    modes = {side.mode for g in graphs.groups if isinstance(g, KronGroup) for side in g.sides}
    assert {"dense", "stream"} <= modes  # dense sides read their seeds from the device table
    assert any(any(g.truncated(range(g.B))) for g in graphs.groups if isinstance(g, KronGroup))
    assert eager.counters["steps"] == cap.counters["steps"] == 14


def test_chunked_runs_and_first_steps_match() -> None:
    """Chunks of one block each (``max_step_numel``), and a group whose blocks are not all warm
    (steps eagerly until they are)."""
    w_eager, eager = _run(False, torch.bfloat16, 8, max_step_numel=1000)
    w_cap, cap = _run(True, torch.bfloat16, 8, max_step_numel=1000)
    for a, b in zip(w_eager, w_cap):
        assert torch.equal(a, b)
    _states_equal(eager, cap)


def test_key_changes_when_a_basis_widens() -> None:
    """A refresh that widens a basis reallocates the group's state: the key changes (the next step
    runs eagerly, the one after captures again) and the steps still equal eager ones."""
    runs = {}
    for captured in (False, True):
        params = _model(torch.bfloat16)
        opt, graphs = _opt(params, captured)
        gen = torch.Generator().manual_seed(1)
        grp = next(g for g in opt.groups if isinstance(g, KronGroup) and g.sides[1].mode == "stream")
        keys = []
        for t in range(8):
            if t == 4:
                grp._grow(grp.sides[1], grp.sides[1].K + 16)  # what apply_bases does for a wider basis
            _grads(params, gen)
            opt.step()
            if captured:  # (no entry at step 1: the first step builds the bases, eagerly)
                keys.append(graphs.entries[id(grp)].key if id(grp) in graphs.entries else None)
        runs[captured] = [p.detach().clone() for p in params]
    assert all(torch.equal(a, b) for a, b in zip(runs[False], runs[True]))
    assert keys[0] is None and keys[1] is not None
    assert keys[3] != keys[4] and keys[4] == keys[5]  # a new key at the widening step, then stable
    assert keys[4] == graphs.key(grp, opt._hyper(grp), opt._runs(grp, list(range(grp.B))))


def test_ineligible_groups_step_eagerly() -> None:
    """Grafting reads the bias corrections as floats: such groups are never captured."""
    params = _model(torch.float32)
    opt = SCAO(params, lr=1e-2, refresh_lag=0, graft="norm", full_factor_dim=24, oversample=4)
    graphs = GroupGraphs(opt.groups, torch.device("cpu"), record=False).install(opt)
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        _grads(params, gen)
        opt.step()
    assert all(isinstance(graphs.groups[graphs.pos[gid]], AdamGroup) for gid in graphs.entries)
    assert not any(isinstance(g, KronGroup) and g.capturable() for g in opt.groups)


def _mlp_run(captured: bool, steps: int) -> tuple[list[torch.Tensor], SCAO, list[bool]]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(48, 40), torch.nn.ReLU(), torch.nn.Linear(40, 48), torch.nn.ReLU(), torch.nn.Linear(48, 40)
    ).to(torch.bfloat16)
    opt = SCAO(model.parameters(), lr=1e-2, refresh_lag=0, precond_freq=2, full_factor_dim=24, oversample=4)
    if captured:
        GroupGraphs(opt.groups, torch.device("cpu"), record=False).install(opt)
    gen = torch.Generator().manual_seed(1)
    aliased = []
    for _ in range(steps):
        for _ in range(2):  # two micro-batches: the second backward accumulates
            x = torch.randn(8, 48, generator=gen).to(torch.bfloat16)
            model(x).float().square().mean().backward()
        if captured:
            graphs = opt._graphs[torch.device("cpu")]
            aliased.append(any(graphs._aliased(e) for e in graphs.entries.values()))
        opt.step()
        opt.zero_grad()
    return [p.detach().clone() for p in model.parameters()], opt, aliased


def test_gradients_accumulate_into_the_graph_buffers() -> None:
    """After ``zero_grad`` the captured groups' parameters hold zeroed views of the gradient buffer as
    ``.grad``; backward accumulates into them (two micro-batches), the step copies nothing, and the
    updates equal eager ones with torch's ``zero_grad``."""
    w_eager, _, _ = _mlp_run(False, 8)
    w_cap, cap, aliased = _mlp_run(True, 8)
    for a, b in zip(w_eager, w_cap):
        assert torch.equal(a, b)
    assert not aliased[0] and aliased[-1]  # the first steps copy; once views are installed, none
    graphs = cap._graphs[torch.device("cpu")]
    with_views = [e for e in graphs.entries.values() if e.views]
    viewed = [p for e in with_views for p, _ in e.views]
    for e in with_views:
        for p, view in e.views:
            assert p.grad is view and not p.grad.any()  # zeroed views after zero_grad
    # the 1-D parameters' AdamW group too: bf16 gradients, as the parameters (its kernel widens them)
    adam = [g for g in cap.groups if isinstance(g, AdamGroup)]
    assert adam and all(graphs.entries[id(g)].views for g in adam)
    assert all(p.grad is None for p in cap._all_params() if not any(p is q for q in viewed))


@pytest.mark.parametrize("freq", [2, 1000], ids=["refresh due: the host reads the check", "the check deferred"])
@pytest.mark.parametrize("where", ["a view into a buffer", "a gradient replaced by the user"])
def test_a_nonfinite_gradient_skips_the_step_through_the_buffers(where: str, freq: int) -> None:
    """With the gradients in the captured groups' buffers (views), the non-finite check reads the
    buffers: a NaN in one of them, or in a gradient that is no longer a view (replaced after the
    backward), skips the whole step, states and weights untouched.

    With refreshes due at the step the host reads the check before submitting them; without, the
    replays are launched with the check's device flag as their rows' gate (every state write reads it:
    here the twins run, their writes kept out) and the host reads it only at the next step (or the next
    ``state_dict``): until then its step counts are a step ahead, after it they
    are taken back, and the next finite step is the same bits as one step from the saved state."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(48, 40), torch.nn.ReLU(), torch.nn.Linear(40, 48)).to(torch.bfloat16)
    params = list(model.parameters())
    kw = {"lr": 1e-2, "refresh_lag": 0, "precond_freq": freq, "full_factor_dim": 24, "oversample": 4}
    opt = SCAO(params, **kw)
    graphs = GroupGraphs(opt.groups, torch.device("cpu"), record=False).install(opt)
    gen = torch.Generator().manual_seed(1)

    def backward() -> None:
        model(torch.randn(8, 48, generator=gen).to(torch.bfloat16)).float().square().mean().backward()

    for _ in range(5):
        backward()
        opt.step()
        opt.zero_grad()
    backward()
    saved = copy.deepcopy(opt.state_dict())
    target = model[0].weight
    if where != "a view into a buffer":
        target.grad = target.grad.clone()  # e.g. a clipping helper that returns new tensors
    viewed = graphs.check_operands(gather=False)[2]  # (the parameters whose .grad are views of a buffer)
    pid = {id(p): i for i, p in enumerate(opt._all_params())}
    assert pid[id(model[2].weight)] in viewed and (pid[id(target)] in viewed) == (where == "a view into a buffer")
    target.grad.view(-1)[3] = float("nan")
    before = [p.detach().clone() for p in params]
    state = {(id(g), k): v.clone() for g in opt.groups for k, v in g.t.items()}
    steps = [list(g.steps) for g in opt.groups]
    replays = graphs.counts["eager"]
    opt.step()
    deferred = opt._unsettled is not None
    assert deferred == (freq == 1000)
    assert not bool(graphs.table[:, scalars.GATE].any())  # armed with the check
    if deferred:  # the replays ran behind the shut gate (their twins wrote nothing); the host has not looked
        assert graphs.counts["eager"] > replays
        assert opt.counters["skipped_steps"] == 0 and [list(g.steps) for g in opt.groups] != steps
    assert all(torch.equal(a, b) for a, b in zip(before, params))
    assert all(torch.equal(state[(id(g), k)], v) for g in opt.groups for k, v in g.t.items())
    assert opt.global_counters()["skipped_steps"] == 1  # (reads the check)
    assert opt._unsettled is None and opt.counters["steps"] == 5
    assert [list(g.steps) for g in opt.groups] == steps
    # the step planned before the check (scalars of step t + 1 already on the device) is taken by the next
    # finite step: the weights then move as one more step from the same state does, bit for bit
    opt.zero_grad()
    backward()
    grads = [p.grad.clone() for p in params]
    opt.step()
    twin = copy.deepcopy(model)
    twin_params = list(twin.parameters())
    for p, b in zip(twin_params, before):
        p.data.copy_(b)
    topt = SCAO(twin_params, **kw)
    topt.load_state_dict(saved)
    for p, g in zip(twin_params, grads):
        p.grad = g
    topt.step()
    assert all(torch.equal(a, b) for a, b in zip(params, twin_params))
    _states_equal(opt, topt)


def _spy(graphs: GroupGraphs) -> tuple[list[int], list[int]]:
    """Record, per step, how many groups ``launch`` copies gradients of, and how many blocks the check copies."""
    copied_by_step: list[int] = []
    gathered: list[int] = []
    copy_gradients, check_operands = graphs._copy_gradients, graphs.check_operands

    def copying(work):
        copied_by_step.append(len(work))
        return copy_gradients(work)

    def operands(gather, same=False):
        out = check_operands(gather, same)
        gathered.append(len(out[1]))
        return out

    graphs._copy_gradients, graphs.check_operands = copying, operands
    return copied_by_step, gathered


def test_column_blocks_are_copied_in_by_the_check() -> None:
    """A weight cut into column blocks cannot hand its ``.grad`` out as rows of its group's buffer: the step's
    NaN/inf check copies those blocks in on its way (``GroupGraphs.check_operands``, ``kernels.finite_gather``)
    and the step copies nothing more. The updates equal eager steps bit for bit, and a NaN in a column block
    skips the step, weights and states untouched; a NaN elsewhere in the weight's gradient as well. ``zero_grad``
    leaves the split weight one zeroed gradient tensor, the same at every step (so the check is replayed)."""

    def make() -> tuple[torch.nn.Module, SCAO]:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(96, 40), torch.nn.ReLU(), torch.nn.Linear(40, 96))
        kw = {"refresh_lag": 0, "precond_freq": 2, "full_factor_dim": 24, "oversample": 4, "max_precond_dim": 48}
        return model.to(torch.bfloat16), SCAO(model.parameters(), lr=1e-2, **kw)

    runs = {}
    for captured in (False, True):
        model, opt = make()
        graphs = GroupGraphs(opt.groups, torch.device("cpu"), record=False)
        if captured:
            graphs.install(opt)
        copied_by_step, gathered = _spy(graphs)
        gen = torch.Generator().manual_seed(1)
        for _ in range(8):
            model(torch.randn(8, 96, generator=gen).to(torch.bfloat16)).float().square().mean().backward()
            opt.step()
            opt.zero_grad()
        runs[captured] = (model, opt, graphs, copied_by_step, gathered)
    (m_e, o_e, *_), (m_c, o_c, graphs, copied_by_step, gathered) = runs[False], runs[True]
    assert all(torch.equal(a, b) for a, b in zip(m_e.parameters(), m_c.parameters()))
    _states_equal(o_e, o_c)
    split = [g for g in o_c.groups if isinstance(g, KronGroup) and g.specs[0].c1 - g.specs[0].c0 < 96]
    assert split and id(split[0]) in graphs.entries  # the column blocks' group was captured ...
    assert gathered[-1] == split[0].B and copied_by_step[-3:] == [0, 0, 0]  # ... copied in by the check alone
    home = m_c[0].weight.grad  # zero_grad leaves the split weight a zeroed gradient tensor, the same every step
    assert home is not None and not home.any() and m_e[0].weight.grad is None
    for where in ("a column block", "the weight outside the copied blocks"):
        weight = m_c[0].weight
        model, opt = m_c, o_c
        model(torch.randn(8, 96, generator=torch.Generator().manual_seed(5)).to(torch.bfloat16)).sum().backward()
        if where == "a column block":
            weight.grad[7, 50] = float("nan")
        else:
            model[2].weight.grad[0, 0] = float("inf")
        before = [p.detach().clone() for p in model.parameters()]
        state = {(id(g), k): v.clone() for g in opt.groups for k, v in g.t.items()}
        skipped = opt.global_counters().get("skipped_steps", 0)
        with pytest.warns(RuntimeWarning, match="non-finite") if skipped == 0 else contextlib.nullcontext():
            opt.step()
            assert opt.global_counters()["skipped_steps"] == skipped + 1, where
        assert all(torch.equal(a, b) for a, b in zip(before, model.parameters())), where
        assert all(torch.equal(state[(id(g), k)], v) for g in opt.groups for k, v in g.t.items()), where
        opt.zero_grad()
        assert m_c[0].weight.grad is home and not home.any()


def test_deferred_skips_count_as_consecutive() -> None:
    """Skips found at the next step still count towards ``max_consecutive_skips`` (one step late)."""
    params = _model(torch.bfloat16)
    opt, _ = _opt(params, True, precond_freq=1000, max_consecutive_skips=1)
    gen = torch.Generator().manual_seed(1)
    for _ in range(4):
        _grads(params, gen)
        opt.step()
    with pytest.warns(RuntimeWarning, match="non-finite"):
        for _ in range(2):
            _grads(params, gen)
            params[0].grad[0, 0] = float("inf")
            opt.step()
            assert opt._unsettled is not None
        with pytest.raises(FloatingPointError, match="2 steps in a row"):
            opt.step()  # (reads the second skip first)
    assert opt.counters["skipped_steps"] == 2 and opt.counters["steps"] == 4


def test_resume_through_the_captured_path_is_bit_exact() -> None:
    """Save after 6 steps, load into a fresh model and optimizer (both stepping through the device
    inputs), continue: the same bits as never stopping. The loaded state is new tensors: new keys."""
    import io

    def make() -> tuple[list[torch.nn.Parameter], SCAO]:
        params = _model(torch.bfloat16)
        return params, _opt(params, True)[0]

    gen = torch.Generator().manual_seed(3)
    shapes = [p.shape for p in _model(torch.bfloat16)]
    grads = [[(torch.randn(s, generator=gen) * 0.1).bfloat16() for s in shapes] for _ in range(12)]

    def run(params, opt, gs) -> None:
        for g in gs:
            for p, gi in zip(params, g):
                p.grad = gi.clone()
            opt.step()

    params, opt = make()
    run(params, opt, grads[:6])
    buf = io.BytesIO()
    torch.save({"w": [p.detach().clone() for p in params], "opt": opt.state_dict()}, buf)
    run(params, opt, grads[6:])
    buf.seek(0)
    ck = torch.load(buf, weights_only=True)
    fresh, fresh_opt = make()
    with torch.no_grad():
        for p, w in zip(fresh, ck["w"]):
            p.copy_(w)
    fresh_opt.load_state_dict(ck["opt"])
    run(fresh, fresh_opt, grads[6:])
    assert all(torch.equal(a, b) for a, b in zip(params, fresh))
    assert fresh_opt._graphs[torch.device("cpu")].counts["eager"] > 0


@pytest.mark.parametrize(
    "kwargs, why", [({}, "no parameter is on a CUDA device"), ({"grad_release": True}, "grad_release")]
)
def test_cuda_graph_without_effect_says_so(kwargs, why) -> None:
    with pytest.warns(RuntimeWarning, match=why):
        opt = SCAO(_model(torch.float32), lr=1e-2, cuda_graph=True, **kwargs)
    assert opt._graphs == {}


def test_steps_with_a_missing_gradient_stay_equal() -> None:
    """A parameter without a gradient at some steps: its group steps eagerly then (not every block
    steps) and afterwards too (its blocks are at different step counts); the others stay captured."""
    runs = {}
    for captured in (False, True):
        params = _model(torch.bfloat16)
        opt, graphs = _opt(params, captured)
        gen = torch.Generator().manual_seed(1)
        for t in range(9):
            _grads(params, gen)
            if t in (3, 6):
                params[1].grad = None
            opt.step()
        runs[captured] = [p.detach().clone() for p in params]
    assert all(torch.equal(a, b) for a, b in zip(runs[False], runs[True]))
    steps = {tuple(g.steps) for g in opt.groups if isinstance(g, KronGroup) and len(set(g.steps)) > 1}
    assert steps  # a group with blocks at different step counts: it steps eagerly from then on
    assert graphs.counts["eager"] > 0


def test_lanes_balance_the_groups_by_size() -> None:
    """``graph_streams``: groups go to lanes largest first, each to the lane with the fewest elements
    (ties to the lowest); fixed per group (its graphs live in its lane's pool)."""
    from scao_dist.capture import assign_lanes

    sizes = {11: 100, 12: 60, 13: 50, 14: 10, 15: 10}
    assert assign_lanes(sizes, 1) == dict.fromkeys(sizes, 0)
    lanes = assign_lanes(sizes, 2)
    assert lanes == {11: 0, 12: 1, 13: 1, 14: 0, 15: 0}  # loads 120 / 110
    assert assign_lanes(sizes, 5) == {11: 0, 12: 1, 13: 2, 14: 3, 15: 4}
    params = _model(torch.bfloat16)
    opt = SCAO(params, lr=1e-2, full_factor_dim=24, rank_max=12)
    graphs = GroupGraphs(opt.groups, torch.device("cpu"), record=False, streams=2)
    assert sorted(set(graphs.lane_of.values())) == [0, 1] and len(graphs.lane_of) == len(opt.groups)
    with pytest.raises(ValueError, match="streams must be at least 1"):
        GroupGraphs(opt.groups, torch.device("cpu"), record=False, streams=0)
    with pytest.raises(ValueError, match="graph_streams must be at least 1"):
        SCAO(params, lr=1e-2, graph_streams=0)


def test_lanes_order_their_streams_around_the_step(monkeypatch) -> None:
    """Two lanes, with stand-in streams: before any work of lane 1 its stream waits for the caller's (the
    check, the uploads), each group's work runs on its lane's stream, the caller's stream waits for lane 1
    before the step returns, and the steps still equal eager ones bit for bit."""
    log: list[tuple] = []

    class Stream:
        def __init__(self, name: str) -> None:
            self.name = name

        def wait_stream(self, other: Stream) -> None:
            log.append(("wait", self.name, other.name))

    main, lane1 = Stream("main"), Stream("lane1")
    current = [main]

    @contextlib.contextmanager
    def stream(s: Stream):
        prev, current[0] = current[0], s
        try:
            yield
        finally:
            current[0] = prev

    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: current[0])
    monkeypatch.setattr(torch.cuda, "stream", stream)
    body = GroupGraphs._body

    def logged(grp, hp, runs, e) -> None:
        log.append(("body", graphs.lane_of[id(grp)], current[0].name))
        body(grp, hp, runs, e)

    monkeypatch.setattr(GroupGraphs, "_body", staticmethod(logged))
    params, ref = _model(torch.bfloat16), _model(torch.bfloat16)
    opt, _ = _opt(params, False)
    eager, _ = _opt(ref, False)
    graphs = GroupGraphs(opt.groups, torch.device("cpu"), record=False, streams=2)
    graphs.lane_streams = [None, lane1]
    graphs.install(opt)
    gen, gen_ref = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    both = 0
    for _ in range(8):
        log.clear()
        _grads(params, gen)
        _grads(ref, gen_ref)
        opt.step()
        eager.step()
        bodies = [e for e in log if e[0] == "body"]
        assert all(name == ("lane1" if lane else "main") for _, lane, name in bodies)
        both += {lane for _, lane, _ in bodies} == {0, 1}
        if any(lane == 1 for _, lane, _ in bodies):
            first1 = next(i for i, e in enumerate(log) if e[:2] == ("body", 1))
            assert ("wait", "lane1", "main") in log[:first1]
            assert log[-1] == ("wait", "main", "lane1")
    assert both >= 6  # (the first steps build the bases outside the captured path)
    assert all(torch.equal(a, b) for a, b in zip(params, ref))
    _states_equal(opt, eager)
