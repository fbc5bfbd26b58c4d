"""SCAO on one process: equivalence with plain SOAP, convergence, stability, resume, API."""

import copy
import io
import warnings

import pytest
import torch
from soap_reference import ReferenceSOAP

from scao_dist import SCAO, memory_report
from scao_dist.demo import GPT, GPTConfig


def _mlp(d=12, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(d, d), torch.nn.Tanh(), torch.nn.Linear(d, d))


def _batches(d=12, n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, d, generator=g)
    while True:
        x = torch.randn(n, d, generator=g)
        yield x, torch.tanh(x @ w)


def _train(model, opt, steps, batches):
    losses = []
    for _ in range(steps):
        x, y = next(batches)
        opt.zero_grad()
        loss = (model(x) - y).square().mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


# ------------------------------------------------------------------------ equivalence
def test_full_rank_fp32_matches_reference_soap():
    """quantize=False, rank='full', graft='none' is plain fp32 SOAP (to float rounding)."""
    m1, m2 = _mlp(), _mlp()
    m0 = copy.deepcopy(m1)
    o1 = SCAO(m1.parameters(), lr=1e-3, betas=(0.9, 0.999), quantize=False, rank="full", graft="none", precond_freq=10,
              stagger_refresh=False, min_precond_dim=2, weight_decay=0.01)  # fmt: skip
    o2 = ReferenceSOAP(m2.parameters(), lr=1e-3, weight_decay=0.01)
    b1, b2 = _batches(), _batches()
    for step in range(30):  # three refreshes (steps 10, 20, 30)
        _train(m1, o1, 1, b1)
        _train(m2, o2, 1, b2)
        diff = max((a - b).abs().max().item() for a, b in zip(m1.parameters(), m2.parameters()))
        assert diff < 1e-5, (step, diff)
    moved = max((a - b).abs().max().item() for a, b in zip(m0.parameters(), m2.parameters()))
    assert moved > 1e-2  # the comparison is not vacuous
    # call 1 builds the bases, so 29 Adam steps: refreshes at steps 10 and 20, two matrices each
    assert o1.counters["refreshes"] == 2 * 2


# ------------------------------------------------------------------------ convergence
def _illcond_problem(seed=0, din=32, dout=16, hidden=32):
    g = torch.Generator().manual_seed(seed)
    u = torch.linalg.qr(torch.randn(din, din, generator=g)).Q
    a = u @ torch.diag(torch.logspace(0, 2, din)) @ torch.linalg.qr(torch.randn(din, din, generator=g)).Q
    w = torch.randn(din, dout, generator=g) / din**0.5
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(din, hidden, bias=False), torch.nn.Linear(hidden, hidden, bias=False),
        torch.nn.Linear(hidden, dout, bias=False),
    )  # fmt: skip

    def batch(k):
        gg = torch.Generator().manual_seed(1000 + k)
        x = torch.randn(256, din, generator=gg) @ a / 30
        return x, x @ w

    return model, batch


def _final_loss(make_opt, steps=300):
    model, batch = _illcond_problem()
    opt = make_opt(model.parameters())
    for k in range(steps):
        x, y = batch(k)
        opt.zero_grad()
        (model(x) - y).square().mean().backward()
        opt.step()
    x, y = batch(10**6)
    return (model(x) - y).square().mean().item()


def test_scao_beats_adamw_on_ill_conditioned_deep_linear_net():
    """A deep linear net on inputs with condition number 1e4: each optimizer at its best lr."""
    lrs = (3e-3, 1e-2, 3e-2)
    adamw = min(
        _final_loss(lambda p, lr=lr, b=b: torch.optim.AdamW(p, lr=lr, betas=b, weight_decay=0))
        for lr in lrs
        for b in ((0.9, 0.999), (0.9, 0.95))
    )
    scao = min(_final_loss(lambda p, lr=lr: SCAO(p, lr=lr, weight_decay=0)) for lr in lrs)
    assert scao < 0.5 * adamw, (scao, adamw)


# -------------------------------------------------------------------------- stability
def _state_snapshot(opt):
    return [{k: v.clone() for k, v in g.t.items()} for g in opt.groups]


def test_nonfinite_gradients_skip_the_step_and_keep_state():
    model = _mlp()
    opt = SCAO(model.parameters(), lr=1e-2)
    batches = _batches()
    _train(model, opt, 12, batches)
    before_p = [p.detach().clone() for p in model.parameters()]
    before_s = _state_snapshot(opt)
    steps = [list(g.steps) for g in opt.groups]
    for bad in (float("nan"), float("inf")):
        x, y = next(batches)
        opt.zero_grad()
        (model(x) - y).square().mean().backward()
        model[0].weight.grad[3, 4] = bad  # one bad entry in one parameter
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            opt.step()
        assert (len(w) == 1) == (bad != bad)  # warned once, on the first skip only
    assert opt.counters["skipped_steps"] == 2
    for a, b in zip(before_p, model.parameters()):
        assert torch.equal(a, b)
    for snap, g in zip(before_s, opt.groups):
        for k, v in snap.items():
            assert torch.equal(v, g.t[k]), k
    assert steps == [list(g.steps) for g in opt.groups]
    _train(model, opt, 3, batches)  # and training goes on
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_failed_eigendecomposition_keeps_the_old_basis(monkeypatch):
    model = _mlp(d=16)
    opt = SCAO(model.parameters(), lr=1e-2, stagger_refresh=False, min_precond_dim=2)
    batches = _batches(d=16)
    _train(model, opt, 5, batches)
    kron = [g for g in opt.groups if hasattr(g, "sides")]
    bases = [g.t["L.q"].clone() for g in kron]

    def broken(*args, **kwargs):
        raise torch.linalg.LinAlgError("forced failure")

    def no_cholesky(a, *args, **kwargs):  # Cholesky-QR and Nystrom see a breakdown, fall back, fail
        return a.clone(), torch.ones(a.shape[:-2], dtype=torch.int32)

    monkeypatch.setattr(torch.linalg, "qr", broken)
    monkeypatch.setattr(torch.linalg, "eigh", broken)
    monkeypatch.setattr(torch.linalg, "cholesky_ex", no_cholesky)
    _train(model, opt, 10, batches)  # crosses the refresh at step 10 (step 1 built the first basis)
    assert opt.counters["basis_failures"] >= 2
    assert opt.counters["basis_failures: qr: failed"] >= 2  # the reason is counted too
    for g, b in zip(kron, bases):
        assert torch.equal(g.t["L.q"], b)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def _fake_4bit(w):
    """Symmetric 4-bit fake quantisation, per output row (stand-in for a bnb/torchao base)."""
    scale = w.abs().amax(1, keepdim=True) / 7
    return (w / scale).round().clamp(-8, 7) * scale


class LoRALinear(torch.nn.Module):
    def __init__(self, d_in, d_out, r=4):
        super().__init__()
        self.base = torch.nn.Parameter(_fake_4bit(torch.randn(d_out, d_in) / d_in**0.5), requires_grad=False)
        self.a = torch.nn.Parameter(torch.randn(r, d_in) / d_in**0.5)
        self.b = torch.nn.Parameter(torch.zeros(d_out, r))  # LoRA init: B = 0 -> grad of A is 0 at step 1

    def forward(self, x):
        return x @ self.base.T + (x @ self.a.T) @ self.b.T


def test_lora_over_quantized_base_is_finite_from_step_one():
    torch.manual_seed(0)
    model = torch.nn.Sequential(LoRALinear(32, 32), torch.nn.Tanh(), LoRALinear(32, 32))
    opt = SCAO([p for p in model.parameters() if p.requires_grad], lr=3e-3, min_precond_dim=2)
    batches = _batches(d=32)
    losses = _train(model, opt, 40, batches)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    # A's gradient is exactly zero at step 1: its factors are empty, identity basis kept, counted
    assert opt.counters["basis_failures"] >= 2
    assert opt.counters["basis_failures: first basis, zero factor"] >= 2
    assert sum(losses[-5:]) < sum(losses[:5])


# ------------------------------------------------------------------------------ state
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "kwargs", [{}, {"quantize": False, "rank": "full"}, {"full_factor_dim": 8, "rank_max": 4, "rank_min": 2}]
)
def test_resume_is_bit_exact(dtype, kwargs):
    """Save at step 13, load into a fresh model and optimizer, continue: same bits as never stopping."""
    gen = _batches(d=20)
    data = [next(gen) for _ in range(25)]

    def run(m, o, batches):
        for x, y in batches:
            o.zero_grad()
            (m(x.to(dtype)) - y.to(dtype)).float().square().mean().backward()
            o.step()

    model = _mlp(d=20).to(dtype)
    opt = SCAO(model.parameters(), lr=1e-2, min_precond_dim=2, **kwargs)
    run(model, opt, data[:13])
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    run(model, opt, data[13:])  # never stopped

    buf.seek(0)
    ck = torch.load(buf, weights_only=True)
    fresh = _mlp(d=20, seed=1).to(dtype)
    fresh.load_state_dict(ck["model"])
    fresh_opt = SCAO(fresh.parameters(), lr=1e-2, min_precond_dim=2, **kwargs)
    fresh_opt.load_state_dict(ck["opt"])
    run(fresh, fresh_opt, data[13:])
    for a, b in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(a, b)


def test_state_dict_is_compressed_and_tensors_only():
    model = _mlp(d=40).to(torch.bfloat16)
    opt = SCAO(model.parameters(), lr=1e-2, min_precond_dim=2)
    batches = _batches(d=40)
    for _ in range(3):
        x, y = next(batches)
        opt.zero_grad()
        (model(x.bfloat16()) - y.bfloat16()).float().square().mean().backward()
        opt.step()
    sd = opt.state_dict()
    blk = sd["state"][0]["b0"]
    assert blk["m.codes"].dtype == torch.int8 and blk["v.codes"].dtype == torch.uint8
    assert blk["L.fac.codes"].dtype == torch.int8 and blk["ebits"].dtype == torch.int8
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    torch.load(buf, weights_only=True)  # no Python objects inside


def test_memory_report_counts_every_piece():
    model = _mlp(d=64).to(torch.bfloat16)
    opt = SCAO(model.parameters(), lr=1e-3, min_precond_dim=2)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    rep = memory_report(opt)
    held = sum(v.numel() * v.element_size() for g in opt.groups for v in g.t.values())
    assert rep.total == held
    assert rep.params == sum(p.numel() for p in model.parameters())
    assert rep.bytes["error_bits"] == rep.params  # one int8 per bf16 weight
    assert rep.bytes["moments"] >= 2 * rep.params * 0.9


@pytest.mark.parametrize(
    ("shape", "budget"), [(GPTConfig.small(), 4.5), (GPTConfig(d_model=2048, n_layer=1, n_head=16), 4.0)]
)
def test_gpt_shapes_fit_the_memory_budget(shape, budget):
    """Everything SCAO holds on the DESIGN.md GPT shapes, bf16 weights, every basis at its rank cap.

    Random full-rank gradients make the adaptive rank pick its maximum, so this is the worst case.
    The 43M model is checked whole; the 405M shape on one of its layers (its bytes per parameter
    are per layer: the embeddings are 0.3% of it).
    """
    torch.manual_seed(0)
    model = GPT(shape).to(torch.bfloat16)
    opt = SCAO(model.parameters(), lr=1e-3)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    opt.step()
    rep = memory_report(opt)
    assert rep.bytes_per_param <= budget, str(rep)


# -------------------------------------------------------------------------------- API
def test_drop_in_for_adamw_api():
    model = _mlp()
    frozen = torch.nn.Parameter(torch.randn(4, 4), requires_grad=False)
    unused = torch.nn.Parameter(torch.randn(12))  # never receives a gradient
    opt = SCAO(
        [
            {"params": [model[0].weight, model[0].bias], "lr": 2e-3, "weight_decay": 0.0},
            {"params": [model[2].weight, frozen, unused], "betas": (0.9, 0.95)},
        ],
        lr=1e-3,
    )
    opt.add_param_group({"params": [model[2].bias], "lr": 5e-4})
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 5))
    batches = _batches()
    for _ in range(12):
        x, y = next(batches)

        def closure(x=x, y=y):
            opt.zero_grad()
            loss = (model(x) - y).square().mean()
            loss.backward()
            return loss

        loss = opt.step(closure)
        sched.step()
        assert torch.isfinite(loss)
    assert opt.param_groups[0]["lr"] == pytest.approx(2e-3)
    assert opt.param_groups[2]["lr"] == pytest.approx(5e-4)
    assert unused.grad is None and torch.isfinite(unused).all()
    assert not any(s.param == 3 for s in opt.specs)  # the frozen parameter got no state


def test_step_hooks_run_as_torch_runs_them(monkeypatch):
    """SCAO's own step wrapper (scao_dist.step_hooks) keeps torch's contract: global then per-optimizer
    pre-hooks (a returned pair replaces the arguments), the step, post-hooks; the grad mode restored,
    also when the step raises; an LR scheduler sees the step; the profiler's ``record_function`` only
    while a profiler records, under torch's name."""
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

    model = _mlp()
    opt = SCAO(model.parameters(), lr=1e-3)
    calls = []
    x, y = next(_batches())

    def closure():
        calls.append("closure")
        opt.zero_grad()
        loss = (model(x) - y).square().mean()
        loss.backward()
        return loss

    handles = [
        register_optimizer_step_pre_hook(lambda o, a, k: calls.append(("global pre", o is opt))),
        opt.register_step_pre_hook(lambda o, a, k: ((o,), {"closure": closure})),  # supplies the closure
        opt.register_step_post_hook(lambda o, a, k: calls.append(("post", k["closure"] is closure))),
        register_optimizer_step_post_hook(lambda o, a, k: calls.append("global post")),
    ]
    try:
        assert torch.isfinite(opt.step())  # the closure came from the pre-hook
    finally:
        for h in handles:
            h.remove()
    assert calls == [("global pre", True), "closure", ("post", True), "global post"]
    assert type(opt).step.hooked and torch.is_grad_enabled()

    bad = opt.register_step_pre_hook(lambda o, a, k: "not a pair")
    with pytest.raises(RuntimeError, match="must return None or a tuple"):
        opt.step()
    bad.remove()
    model[0].weight.grad = torch.sparse_coo_tensor(torch.zeros(2, 0, dtype=torch.long), [], (12, 12))
    with pytest.raises(TypeError, match="sparse"):
        opt.step()
    assert torch.is_grad_enabled()  # restored although the step raised
    opt.zero_grad()

    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    closure()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "lr_scheduler.step() before optimizer.step()" would raise here
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(5e-4)

    def no_record(*a, **k):
        raise AssertionError("record_function entered without a profiler")

    closure()  # (torch's zero_grad opens a record_function of its own)
    with monkeypatch.context() as m:
        m.setattr(torch.autograd.profiler, "record_function", no_record)
        opt.step()
    closure()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        opt.step()
    assert "Optimizer.step#SCAO.step" in {e.name for e in prof.events()}


def test_weight_decay_is_decoupled_and_per_group():
    p1 = torch.nn.Parameter(torch.ones(16))
    p2 = torch.nn.Parameter(torch.ones(16))
    opt = SCAO([{"params": [p1], "weight_decay": 0.5}, {"params": [p2], "weight_decay": 0.0}], lr=0.1)
    p1.grad = torch.zeros(16)
    p2.grad = torch.zeros(16)
    opt.step()
    assert torch.allclose(p1, torch.full((16,), 0.95))  # x (1 - lr wd), zero gradient
    assert torch.equal(p2, torch.ones(16))


def test_same_lr_as_adamw_gives_an_adamw_sized_step():
    """Grafting: SCAO's per-block update RMS stays within 3x of AdamW's at the same lr."""
    m1, m2 = _mlp(d=32), _mlp(d=32)
    o1 = SCAO(m1.parameters(), lr=1e-3, weight_decay=0.0, min_precond_dim=2)
    o2 = torch.optim.AdamW(m2.parameters(), lr=1e-3, weight_decay=0.0)
    b1, b2 = _batches(d=32), _batches(d=32)
    _train(m1, o1, 11, b1)
    _train(m2, o2, 11, b2)
    before1, before2 = m1[0].weight.detach().clone(), m2[0].weight.detach().clone()
    _train(m1, o1, 1, b1)
    _train(m2, o2, 1, b2)
    r1 = (m1[0].weight - before1).square().mean().sqrt().item()
    r2 = (m2[0].weight - before2).square().mean().sqrt().item()
    assert r2 / 3 < r1 < 3 * r2, (r1, r2)


def test_bad_input_gets_clear_errors():
    with pytest.raises(TypeError, match="bfloat16"):
        SCAO([torch.nn.Parameter(torch.zeros(4, 4, dtype=torch.float16))])
    with pytest.raises(ValueError, match="betas"):
        SCAO([torch.nn.Parameter(torch.zeros(4))], betas=(0.9, 1.5))
    with pytest.raises(ValueError, match="rank"):
        SCAO([torch.nn.Parameter(torch.zeros(4))], rank="half")
    with pytest.raises(ValueError, match="spectral_mass"):
        SCAO([torch.nn.Parameter(torch.zeros(4))], spectral_mass=0.0)
    with pytest.raises(ValueError, match="amsgrad"):
        SCAO([torch.nn.Parameter(torch.zeros(4))], amsgrad=True)
    with pytest.raises(ValueError, match="negate the loss"):
        SCAO([torch.nn.Parameter(torch.zeros(4))], maximize=True)
    # AdamW's performance flags are accepted; an empty parameter is skipped
    SCAO([torch.nn.Parameter(torch.zeros(4)), torch.nn.Parameter(torch.zeros(0, 3))], fused=True, foreach=False)
    model = _mlp()
    opt = SCAO(model.parameters())
    other = SCAO(_mlp(d=8).parameters(), quantize=False)
    with pytest.raises(ValueError, match="structure settings"):
        opt.load_state_dict(other.state_dict())


# --------------------------------------------------------------------- gradient release
def test_grad_release_matches_the_normal_step():
    m1, m2 = _mlp(), _mlp()
    o1 = SCAO(m1.parameters(), lr=1e-2)
    o2 = SCAO(m2.parameters(), lr=1e-2, grad_release=True)
    b1, b2 = _batches(), _batches()
    for _ in range(15):
        (x, y), (x2, y2) = next(b1), next(b2)
        o1.zero_grad()
        (m1(x) - y).square().mean().backward()
        o1.step()
        (m2(x2) - y2).square().mean().backward()
        assert all(p.grad is None for p in m2.parameters())  # freed as they arrived
        o2.step()
    # same math; only the batching of the products differs (two 12x12 blocks at once vs one by one)
    for a, b in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_grad_release_refuses_accumulation():
    model = _mlp()
    opt = SCAO(model.parameters(), lr=1e-2, grad_release=True)
    x, y = next(_batches())
    (model(x) - y).square().mean().backward()
    with pytest.raises(RuntimeError, match="accumulation"):
        (model(x) - y).square().mean().backward()
    del opt


def test_chunked_group_steps_match_whole_group_steps():
    """``max_step_numel`` only bounds the step's temporaries: the result is the same math."""
    torch.manual_seed(0)
    base = torch.nn.Sequential(*[torch.nn.Linear(24, 24, bias=False) for _ in range(5)])
    m1, m2 = copy.deepcopy(base), copy.deepcopy(base)
    o1 = SCAO(m1.parameters(), lr=1e-2, min_precond_dim=2)
    o2 = SCAO(m2.parameters(), lr=1e-2, min_precond_dim=2, max_step_numel=2 * 24 * 24)  # runs of 2 blocks
    b1, b2 = _batches(d=24), _batches(d=24)
    _train(m1, o1, 15, b1)
    _train(m2, o2, 15, b2)
    for a, b in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_row_split_weights_are_stacked_in_place_column_split_ones_are_copied():
    """A weight cut along rows only is consecutive rows of its group's buffer (stepped in place);
    one cut along columns is not contiguous there and keeps the copy path. Same result both ways."""

    def model():
        torch.manual_seed(0)
        return torch.nn.Sequential(
            torch.nn.Linear(16, 32, bias=False), torch.nn.Tanh(), torch.nn.Linear(32, 8, bias=False)
        ).to(torch.bfloat16)  # weights 32 x 16 (two 16 x 16 row blocks), 8 x 32 (two 8 x 16 column blocks)

    m1, m2 = model(), model()
    kw = dict(lr=1e-2, min_precond_dim=2, max_precond_dim=16)
    o1, o2 = SCAO(m1.parameters(), **kw), SCAO(m2.parameters(), stacked_weights=False, **kw)
    by_shape = {g.specs[0].shape: g for g in o1.groups}
    rows_grp, cols_grp = by_shape[(16, 16)], by_shape[(8, 16)]
    assert rows_grp.wbuf is not None and cols_grp.wbuf is None
    assert m1[0].weight.data_ptr() == rows_grp.wbuf.data_ptr()  # the parameter's storage is the buffer
    b1, b2 = _batches(d=16), _batches(d=16)
    for m, o, b in ((m1, o1, b1), (m2, o2, b2)):
        for _ in range(6):
            x, y = next(b)
            o.zero_grad()
            (m(x.bfloat16()) - y[:, :8].bfloat16()).float().square().mean().backward()
            o.step()
    for a, b in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(a, b)
    assert m1[0].weight.data_ptr() == rows_grp.wbuf.data_ptr()  # still in place after the steps


def test_stacked_weights_are_the_parameters_and_change_nothing():
    """Groups hold whole parameters in one buffer (the Parameter objects stay; .data are views)."""
    m1, m2 = _mlp(d=16).to(torch.bfloat16), _mlp(d=16).to(torch.bfloat16)
    ids = [id(p) for p in m1.parameters()]
    o1 = SCAO(m1.parameters(), lr=1e-2, min_precond_dim=2)
    o2 = SCAO(m2.parameters(), lr=1e-2, min_precond_dim=2, stacked_weights=False)
    assert [id(p) for p in m1.parameters()] == ids
    assert any(getattr(g, "wbuf", None) is not None for g in o1.groups)
    assert all(getattr(g, "wbuf", None) is None for g in o2.groups)
    b1, b2 = _batches(d=16), _batches(d=16)

    def run(m, o, b, n):
        for _ in range(n):
            x, y = next(b)
            o.zero_grad()
            (m(x.bfloat16()) - y.bfloat16()).float().square().mean().backward()
            o.step()

    run(m1, o1, b1, 6)
    run(m2, o2, b2, 6)
    for a, b in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(a, b)
    # something replaces a parameter's data: the group notices and copies from then on
    w = m1[0].weight
    w.data = w.data.clone()
    run(m1, o1, b1, 6)
    run(m2, o2, b2, 6)
    for a, b in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(a, b)


def test_non_contiguous_parameters_are_updated_in_their_own_layout():
    """A channels-last conv kernel's 2-D view is a copy: its update must still land (and the
    layout stay channels-last), bit for bit as for the same kernel in the default layout."""
    torch.manual_seed(0)
    conv_a = torch.nn.Conv2d(8, 16, 3)
    conv_b = copy.deepcopy(conv_a).to(memory_format=torch.channels_last)
    start = conv_a.weight.detach().clone()
    o_a = SCAO(conv_a.parameters(), lr=1e-2, min_precond_dim=2)
    o_b = SCAO(conv_b.parameters(), lr=1e-2, min_precond_dim=2)
    g = torch.Generator().manual_seed(1)
    for _ in range(4):
        grads = [torch.randn(p.shape, generator=g) for p in conv_a.parameters()]
        for conv, o in ((conv_a, o_a), (conv_b, o_b)):
            for p, gr in zip(conv.parameters(), grads):
                p.grad = gr.clone().to(memory_format=torch.channels_last) if gr.ndim == 4 else gr.clone()
            o.step()
    assert conv_b.weight.is_contiguous(memory_format=torch.channels_last)
    assert (conv_b.weight - start).abs().max() > 1e-3  # it moved
    assert torch.equal(conv_a.weight, conv_b.weight)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_matrix_too_small_to_precondition_steps_as_its_flat_vector(dtype):
    """A matrix with both sides below ``min_precond_dim`` takes the AdamW path as one flat block: its
    steps are bit for bit those of the same values as a 1-D parameter (it used to fail: its block was
    indexed in the matrix's 2-D view). Also in a channels-last conv kernel's layout."""
    torch.manual_seed(0)
    mat = torch.nn.Parameter((torch.randn(6, 5) * 0.5).to(dtype))
    conv = torch.nn.Parameter((torch.randn(4, 3, 1, 2) * 0.5).to(dtype).to(memory_format=torch.channels_last))
    flat = [torch.nn.Parameter(p.detach().reshape(-1).clone()) for p in (mat, conv)]
    o_m = SCAO([mat, conv], lr=1e-2)
    o_f = SCAO(flat, lr=1e-2)
    assert {g.specs[0].kind for g in o_m.groups} == {"adam"}
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        grads = [torch.randn(p.shape, generator=g).to(dtype) for p in (mat, conv)]
        for p, gr in zip((mat, conv), grads):
            p.grad = gr.contiguous(memory_format=torch.channels_last) if gr.ndim == 4 else gr.clone()
        for p, gr in zip(flat, grads):
            p.grad = gr.reshape(-1).clone()
        o_m.step()
        o_f.step()
    for p, q in zip((mat, conv), flat):
        assert torch.equal(p.detach().reshape(-1), q.detach())
        assert not torch.equal(q.detach(), q.detach().clone().zero_())
    assert conv.is_contiguous(memory_format=torch.channels_last)


def test_7b_shaped_layer_factors_and_bases_fit_half_a_byte():
    """DESIGN.md section 2: Kronecker factors + bases <= 0.5 B/param on a 7B-shaped model. One
    LLaMA-7B layer on the meta device, every basis at its widest (no memory is allocated)."""
    from scao_dist.presets import plan_memory

    shapes = [(4096, 4096)] * 4 + [(11008, 4096)] * 2 + [(4096, 11008)] + [(4096,)] * 2
    params = [torch.nn.Parameter(torch.empty(s, device="meta", dtype=torch.bfloat16)) for s in shapes]
    plan = plan_memory(params)
    pieces = plan.state_by_piece
    assert (pieces["factors"] + pieces["bases"]) / plan.params <= 0.5, pieces
    assert sum(pieces.values()) / plan.params <= 4.0, pieces


def test_the_unmasked_residual_update_equals_the_masked_one(monkeypatch):
    """When every block of a group is truncated the residual statistics skip the mask (fewer
    launches); the weights must come out with the same bits as through the masked form."""
    from scao_dist import kernels

    original, taken = kernels.residual_stats, []

    def run():
        model = _mlp(d=20)
        opt = SCAO(model.parameters(), lr=1e-2, min_precond_dim=2, full_factor_dim=8, rank_max=4, rank_min=2)
        _train(model, opt, 12, _batches(d=20))
        return list(model.parameters())

    def spy(*args):
        taken.append(args[9])  # every: the unmasked path
        return original(*args)

    monkeypatch.setattr(kernels, "residual_stats", spy)
    fast = run()
    monkeypatch.setattr(kernels, "residual_stats", lambda *a: original(*a[:9], False, *a[10:]))
    masked = run()
    assert any(taken)
    for a, b in zip(fast, masked):
        assert torch.equal(a, b)


def test_basis_widths_grow_in_steps_of_16():
    """Truncated bases are allocated in multiples of 16 columns (capped at d - oversample), so a rank
    creeping up one column at a time does not give every step a new stacked shape; the columns past
    each block's rank stay zero and the step matches the one computed at exact widths."""
    from scao_dist.groups import Side

    def run(width_for):
        model = _mlp(d=48)
        opt = SCAO(model.parameters(), lr=1e-2, min_precond_dim=2, full_factor_dim=8, rank_max=20, rank_min=2)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(Side, "width_for", width_for)
            _train(model, opt, 12, _batches(d=48))
        return model, opt

    rounded = Side.width_for
    model, opt = run(rounded)
    sides = [s for g in opt.groups if hasattr(g, "sides") for s in g.sides if s.mode == "stream"]
    assert sides and all(s.K % 16 == 0 or s.d - s.p == s.K for s in sides)
    assert any(max(s.ranks) < s.K for s in sides)  # rounding did widen past the largest rank somewhere
    for g in opt.groups:
        for s in getattr(g, "sides", []):
            if s.mode == "stream":
                eig = g.t[f"{s.name}.eig"]
                for i, r in enumerate(s.ranks):
                    assert torch.count_nonzero(eig[i, ..., r : s.K]) == 0
    exact, _ = run(lambda self, k: k)
    for a, b in zip(model.parameters(), exact.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_column_blocks_are_updated_where_they_live():
    """A weight wider than ``max_precond_dim`` is cut into column blocks, which are not contiguous: with a
    truncated stream basis the complement updates them in place through their addresses
    (``WeightBlocks``) instead of a stacked copy scattered back. Both give the same weights, bit for bit,
    the other parameters untouched by the in-place writes."""
    from scao_dist.groups import KronGroup
    from scao_dist.kernels.reference import WeightBlocks

    def run(in_place: bool) -> tuple[list[torch.Tensor], int]:
        torch.manual_seed(0)
        wide = torch.nn.Parameter(torch.randn(24, 128).bfloat16())
        other = torch.nn.Parameter(torch.randn(24, 20).bfloat16())
        opt = SCAO([wide, other], lr=1e-2, max_precond_dim=64, full_factor_dim=8, rank_max=4, rank_min=2,
                   min_precond_dim=2, precond_freq=3, refresh_lag=0)  # fmt: skip
        grp = next(g for g in opt.groups if isinstance(g, KronGroup) and g.specs[0].shape == (24, 64))
        assert [s.c0 for s in grp.specs] == [0, 64]  # the two column blocks of the wide weight
        seen = {"blocks": 0}
        plain = grp.weights

        def weights(idx, where_they_are=False):
            w, in_place_ = plain(idx, where_they_are=where_they_are and in_place)
            seen["blocks"] += isinstance(w, WeightBlocks)
            return w, in_place_

        grp.weights = weights
        gen = torch.Generator().manual_seed(1)
        for _ in range(9):
            wide.grad = torch.randn(24, 128, generator=gen).bfloat16()
            other.grad = torch.randn(24, 20, generator=gen).bfloat16()
            opt.step()
        return [wide.detach().clone(), other.detach().clone()], seen["blocks"]

    (w_a, o_a), used = run(True)
    (w_b, o_b), unused = run(False)
    assert used > 0 and unused == 0
    assert torch.equal(w_a, w_b) and torch.equal(o_a, o_b)
    torch.manual_seed(0)
    assert not torch.equal(w_a, torch.randn(24, 128).bfloat16())  # the steps moved the weights


def _lowrank_toy_movement():
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:  # bench/ is not an installed package: also under a bare `pytest` (as test_bench_smoke)
        sys.path.insert(0, root)
    from bench.lowrank_toy import movement

    return movement


def test_fp32_states_keep_gradients_of_a_fixed_subspace_in_it() -> None:
    """Gradients that all lie in one fixed rank-4 subspace (``bench.lowrank_toy``): with fp32 states and bases
    the weight moves inside that subspace (measured 0.002 of 0.126 outside it), with rank-8 stream bases, a
    complement and refreshes."""
    total, outside = _lowrank_toy_movement()(False, steps=30, rank=4, wdtype=torch.float32)
    assert total > 0.05
    assert outside < 0.25 * total


def test_second_moment_floors_damp_rounding_noise_outside_a_fixed_subspace(monkeypatch) -> None:
    """The same toy with the int8/bf16 defaults: the first moment's code noise lands outside the gradients'
    span, in the complement and in the basis directions the gradient leaves empty, and Adam divides it by
    the second moment's floor. With the floors (``RES_FLOOR``, ``ROT_FLOOR`` = 3e-2 of the gradient's RMS)
    the weight moved 1.45 outside the span; at the floors they replaced (1e-3, none) 11.5."""
    from scao_dist.kernels import reference

    movement = _lowrank_toy_movement()
    _, floored = movement(True, steps=30, rank=4, wdtype=torch.float32)
    monkeypatch.setattr(reference, "RES_FLOOR", 1e-3)
    monkeypatch.setattr(reference, "ROT_FLOOR", 0.0)
    _, unfloored = movement(True, steps=30, rank=4, wdtype=torch.float32)
    assert floored < 0.25 * unfloored, (floored, unfloored)
