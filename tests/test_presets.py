"""scao_dist.presets: the memory-budget mode's plan bounds what SCAO really holds and allocates (CPU)."""

import json
import os
import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from scao_dist import SCAO, memory_report
from scao_dist.demo import GPT, GPTConfig
from scao_dist.presets import (
    GIB,
    LADDER,
    BudgetError,
    adamw_fp32_bytes,
    choose_settings,
    for_memory_budget,
    plan_memory,
)

CFG = GPTConfig(seq_len=32, d_model=192, n_layer=2, n_head=4)


class LiveBytes(TorchDispatchMode):
    """Peak bytes of tensor storages created inside the block and still alive (CPU allocations)."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self.seen = set()

    def _free(self, key, n):
        self.seen.discard(key)
        self.live -= n

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                st = t.untyped_storage()
                if id(st) in self.seen:
                    continue
                n = st.nbytes()
                self.seen.add(id(st))
                self.live += n
                self.peak = max(self.peak, self.live)
                weakref.finalize(st, self._free, id(st), n)
        return out


def _model(seed=0):
    torch.manual_seed(seed)
    return GPT(CFG).to(torch.bfloat16)


def _batches(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    data = torch.randint(0, 64, (4096,), generator=g)  # a small alphabet: learnable in a few steps
    for _ in range(n):
        i = torch.randint(0, data.numel() - CFG.seq_len - 1, (4,), generator=g)
        idx = i[:, None] + torch.arange(CFG.seq_len + 1)
        yield data[idx][:, :-1], data[idx][:, 1:]


@pytest.mark.parametrize(
    "settings",
    [{}, {"grad_release": True}, {"grad_release": True, "rank_max": 16, "full_factor_dim": 128}],
    ids=["defaults", "release", "release-lean"],
)
def test_plan_bounds_state_and_step_temporaries(settings):
    """After refreshes, memory_report <= the planned state; every step call's live bytes <= the planned temporaries."""
    model = _model()
    settings = {**settings, "precond_freq": 3}
    plan = plan_memory(model.parameters(), settings)
    assert plan.weights == sum(p.numel() * 2 for p in model.parameters())
    opt = SCAO(model.parameters(), lr=2e-3, async_refresh=False, **settings)
    peaks = []
    if settings.get("grad_release"):
        inner = opt._release_one

        def tracked(pid, p):
            with LiveBytes() as lb:
                inner(pid, p)
            peaks.append(lb.peak)

        opt._release_one = tracked  # the hooks look the method up on the instance
    losses = []
    for x, y in _batches(7):
        loss = model(x, y)
        loss.backward()
        if settings.get("grad_release"):
            opt.step()
        else:
            with LiveBytes() as lb:
                opt.step()
            peaks.append(lb.peak)
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    assert opt.counters["refreshes"] > 0
    real = memory_report(opt).total
    assert real <= plan.state, (real, plan.state)
    assert real >= 0.7 * (plan.state - plan.pending)  # the bound is not vacuous
    assert max(peaks) <= plan.transient, (max(peaks), plan.transient)
    if not settings.get("grad_release"):
        assert plan.grads == plan.weights


def test_ladder_picks_the_first_setting_that_fits():
    model = _model()
    plans = [plan_memory(model.parameters(), rung) for rung in LADDER[:2]]
    assert plans[1].total < plans[0].total  # releasing gradients saves the buffer and the stacked temporaries
    budget = (plans[1].total + plans[0].total) / 2 / GIB
    chosen = choose_settings(model.parameters(), budget, reserve_gb=0)
    assert chosen.settings == {"grad_release": True} and chosen.fits
    assert chosen.total <= budget * GIB
    assert choose_settings(model.parameters(), 2 * plans[0].total / GIB, reserve_gb=0).settings == {}
    fixed = choose_settings(model.parameters(), budget, reserve_gb=0, rank_max=32)
    assert fixed.settings["rank_max"] == 32


def test_for_memory_budget_returns_a_configured_scao_that_trains():
    model = GPT(CFG)  # fp32: cast in place
    plan0 = plan_memory(model.parameters(), {"grad_release": True})
    opt = for_memory_budget(model, budget_gb=1.05 * plan0.total / GIB, reserve_gb=0, lr=3e-3)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert opt.config.grad_release and opt.memory_plan.fits
    no_decay = [g for g in opt.param_groups if g["weight_decay"] == 0.0]
    assert no_decay and all(p.ndim < 2 for p in no_decay[0]["params"])
    losses = []
    for x, y in _batches(8):
        loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    assert memory_report(opt).total <= opt.memory_plan.state
    assert "AdamW fp32" in opt.memory_plan.table()


def test_fits_where_adamw_fp32_does_not():
    """On a 43M GPT (meta device, no memory): a budget well below AdamW's bytes still fits SCAO's plan
    (0.75x: the plan counts the refresh batch's working set too, 0.05 GiB here)."""
    with torch.device("meta"):
        model = GPT(GPTConfig.small())
    adamw = adamw_fp32_bytes(model)
    budget_gb = 0.75 * adamw / GIB
    plan = choose_settings(model.parameters(), budget_gb, reserve_gb=0)
    assert plan.fits and plan.total < 0.75 * adamw and plan.refresh_work > 0
    assert plan.state / plan.params < 4  # bytes/param of the state at its largest


def test_budget_too_small_is_a_clear_error():
    model = _model()
    with pytest.raises(BudgetError, match="no SCAO setting fits"):
        for_memory_budget(model, budget_gb=0.001, reserve_gb=0)
    with pytest.warns(RuntimeWarning, match="no SCAO setting fits"):
        opt = for_memory_budget(model, budget_gb=0.001, reserve_gb=0, strict=False)
    assert opt.config.grad_release and opt.memory_plan.settings["rank_max"] == LADDER[-1]["rank_max"]
    assert not opt.memory_plan.fits


# ------------------------------------------------------- bench/llama16gb.py, the GPU demonstration
def _bench():
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:
        sys.path.insert(0, root)
    from bench import llama16gb

    return llama16gb


def test_int4_linear_packs_four_bits_and_reconstructs():
    bench = _bench()
    torch.manual_seed(0)
    lin = torch.nn.Linear(128, 48, bias=False).to(torch.bfloat16)
    q = bench.Int4Linear.from_linear(lin)
    assert q.weight.dtype == torch.uint8 and q.weight.numel() == 128 * 48 // 2 and not q.weight.requires_grad
    err = (q.dequantize().float() - lin.weight.float()).abs()
    step = (q.scale.float() / 2).repeat_interleave(64, dim=1)  # half a code step per element, plus bf16 rounding
    assert bool((err <= 1.05 * step + 1e-3).all())
    x = torch.randn(4, 128, dtype=torch.bfloat16)
    rel = (q(x).float() - lin(x).float()).norm() / lin(x).float().norm()
    assert rel < 0.1


def test_bench_records_an_oom_and_goes_on():
    bench = _bench()

    def setup():
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")

    row = bench.run_case("adamw_fp32", setup, lambda step: None, 3, torch.device("cpu"))
    assert row["status"] == "OOM" and row["steps_done"] == 0 and "out of memory" in row["error"]


@pytest.mark.timeout(180)
def test_llama16gb_tiny_cpu(tmp_path, capsys):
    """``python -m bench.llama16gb --tiny --cpu``: every case runs, SCAO preconditions, LoRA over int4 stays finite."""
    if not os.environ.get("CI"):  # CI installs the hf extra: there a missing package is a failure
        pytest.importorskip("transformers")
        pytest.importorskip("peft")
    bench = _bench()
    rows = bench.main(["--tiny", "--cpu", "--steps", "6", "--out", str(tmp_path)])
    by = {r["case"]: r for r in rows}
    assert set(by) == set(bench.CASES)
    assert all(r["status"] == "ok" and r["finite"] and r["steps_done"] == 6 for r in rows), rows
    for case in ("scao_16gb", "scao_lean", "adamw_bf16"):
        assert by[case]["loss_last"] < by[case]["loss_first"], case
    assert by["scao_16gb"]["settings"]["grad_release"] is True
    assert 0 < by["scao_16gb"]["kron_blocks"] <= by["scao_16gb"]["blocks"]
    assert by["lora_int4"]["quantized_linears"] == 14 and by["lora_int4"]["kron_blocks"] > 0
    saved = json.loads((tmp_path / "llama16gb.json").read_text())
    assert [r["case"] for r in saved["cases"]] == list(bench.CASES)
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("| lora_int4 | ok |")  # the Markdown table comes last
