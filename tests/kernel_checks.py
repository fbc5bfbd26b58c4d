"""Kernel checks under the Triton interpreter, run as a script by ``tests/test_kernels.py``.

Triton reads ``TRITON_INTERPRET`` when the kernels are decorated, and the rest of the suite imports
``scao_dist`` without it, so these checks live in their own process:

    TRITON_INTERPRET=1 SCAO_TRITON_ON_CPU=1 python tests/kernel_checks.py --out results.json

The JSON maps each check name to a list of failure messages (empty = passed): one per kernel (its
cases vs the twin, ``hyper`` cases included), ``fallbacks``, ``hyper`` (each kernel given a
``StepScalars`` row == the same kernel given the floats, bit for bit) and ``end_to_end``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
import traceback
import warnings

import torch

from scao_dist import SCAO, kernels
from scao_dist.kernels import adamw, apply, common, factor, finite, lowrank, moments, reference, triton_ops, verify

CPU = torch.device("cpu")
HYPER_KERNELS = ("rotated_adam_", "apply_update_", "adamw_", "complement_update")
"""The kernels that take ``hyper`` (a :class:`scao_dist.kernels.scalars.StepScalars` row)."""
# the interpreter runs the kernels in numpy, which warns where fp32 overflows on purpose (poisoned
# 1e30 scales squared); the GPU and torch saturate the same way silently
warnings.filterwarnings("ignore", "overflow encountered", RuntimeWarning)


def check_kernels() -> dict[str, list[str]]:
    """Every kernel vs its twin at small odd shapes; then again with tiny blocks (many programs, ragged tails)."""
    gen = torch.Generator().manual_seed(1234)
    cases = verify.small_cases(gen, CPU)
    res = verify.run_cases(cases, triton_ops, log=print)
    for k in HYPER_KERNELS:  # the suite (also the GPU's, bench.kernels) must hold hyper cases of each
        if not any("hyper" in c.kwargs for c in cases[k]):
            res[k].append(f"{k}: verify.small_cases has no hyper case")
    saved = moments.BG, adamw.BG, apply.BLOCK, factor.MAX_BJ, factor.TILE, factor.DIAG_BLOCK
    saved_e = moments.EMA_BG, moments.EMA_BG_ODD
    saved_l = lowrank.BM, lowrank.SUMSQ_BM, lowrank.SUMSQ_BN, lowrank.BN, lowrank.BK, lowrank.STATS_BLOCK
    saved_ck = lowrank.COMPLEMENT_BK, lowrank.COMPLEMENT_BK_BF16
    # factor: [4, 16] tiles (not square, so the diagonal crosses tiles off their corners), 16-row diagonal pass
    moments.BG, adamw.BG, apply.BLOCK, factor.MAX_BJ, factor.TILE, factor.DIAG_BLOCK = 2, 4, 64, 16, 64, 16
    moments.EMA_BG, moments.EMA_BG_ODD = 2, 2
    # the other side of each decode/load switch: table against division, lane-wise loads against the tile's layout,
    # int64 offsets against int32 and each program's groups in one row against any consecutive ones
    switches = [(moments, "DECODE_LUT"), (moments, "DECODE_LUT_ODD"), (moments, "EMA_LANEWISE"),
                (adamw, "DECODE_LUT"), (common, "INT32_OFFSETS"), (moments, "EMA_ROWS")]  # fmt: skip
    saved_d = [getattr(mod, name) for mod, name in switches]
    for (mod, name), v in zip(switches, saved_d):
        setattr(mod, name, not v)
    # [16, 32] tiles ([32, 32] for the sums), 32-wide dot chunks (masked past the rank: the main pass has 16),
    # ragged everywhere but the (2, 64, 64) blocks
    lowrank.BM, lowrank.SUMSQ_BM, lowrank.SUMSQ_BN, lowrank.BN, lowrank.BK = 16, 32, 32, 32, 32
    lowrank.COMPLEMENT_BK, lowrank.COMPLEMENT_BK_BF16 = 32, 16
    lowrank.STATS_BLOCK = 8  # statistics: more row chunks than one pass of the finishing kernel adds (16)
    try:
        tiny = {
            "ema_signed_": [verify.case_ema((3, 2, 100), m, gen, CPU) for m in ("state", "overwrite")]
            + [verify.case_ema((3, 2, 64), "state", gen, CPU, xdtype=torch.bfloat16)],
            "rotated_adam_": [verify.case_rotated_adam((3, 2, 100), m, gen, CPU) for m in ("state", "overwrite")]
            + [verify.case_rotated_adam((3, 2, 100), "state", gen, CPU, hyper=True)],
            "apply_update_": [verify.case_apply((5, 77), m, gen, CPU) for m in ("state", "overwrite")]
            + [verify.case_apply((5, 77), "state", gen, CPU, torch.bfloat16, 16, hyper=True)],
            "factor_ema_corr_": [verify.case_factor((3,), 45, m, gen, CPU) for m in ("state", "overwrite")]
            + [verify.case_factor((1,), 64, "state", gen, CPU), verify.case_factor((2, 2), 33, "state", gen, CPU)],
            "adamw_": [
                verify.case_adamw((3, 130), m, gen, CPU, bc=("tensor", "tensor")) for m in ("state", "overwrite")
            ]
            + [verify.case_adamw((3, 130), "state", gen, CPU, torch.float32, 0, hyper=True)],
            "complement_update": [
                verify.case_complement_update((3, 45, 37), "exact", gen, CPU, bc=("tensor", "float"), k=(17, 40)),
                verify.case_complement_update((2, 45, 37), "dense", gen, CPU, bc=("float", "tensor"), k=(9, 33)),
                verify.case_complement_update(
                    (3, 45, 37), "exact", gen, CPU, k=(17, 40), apply=(torch.bfloat16, 8), hyper=True
                ),
                verify.case_complement_update((2, 64, 64), "exact", gen, CPU, k=(17, 40), apply=(torch.bfloat16, 8)),
                verify.case_complement_update(
                    (3, 45, 37), "exact", gen, CPU, k=(32, 32), apply=(torch.bfloat16, 8), bf16="shared16"
                ),
                verify.case_complement_update(
                    (3, 45, 37), "exact", gen, CPU, k=(48, 48), apply=(torch.bfloat16, 8), bf16="shared_all"
                ),
            ],
            "residual_sumsq": [
                verify.case_residual((3, 45, 37, k), m, gen, CPU) for m, k in (("exact", 40), ("dense", 17))
            ]
            + [verify.case_residual((2, 64, 64, 17), "exact", gen, CPU)],
            "residual_stats": [
                verify.case_residual_stats((3, 145, 37, 40), "exact", gen, CPU, mask="some"),
                verify.case_residual_stats((2, 45, 37, None), "exact", gen, CPU, torch.bfloat16),
            ],
        }
        for k, errs in verify.run_cases(tiny, triton_ops, log=print).items():
            res[k] += [f"(tiny blocks) {e}" for e in errs]
    finally:
        moments.BG, adamw.BG, apply.BLOCK, factor.MAX_BJ, factor.TILE, factor.DIAG_BLOCK = saved
        moments.EMA_BG, moments.EMA_BG_ODD = saved_e
        for (mod, name), v in zip(switches, saved_d):
            setattr(mod, name, v)
        lowrank.BM, lowrank.SUMSQ_BM, lowrank.SUMSQ_BN, lowrank.BN, lowrank.BK, lowrank.STATS_BLOCK = saved_l
        lowrank.COMPLEMENT_BK, lowrank.COMPLEMENT_BK_BF16 = saved_ck
    return res


def check_finite_gather() -> list[str]:
    """The NaN/inf check with the gradients' copies (``finite.finite_gather``) == its twin: the flag, the copies
    (``verify.finite_gather_errors``); again with [4, 64] tiles (many programs per segment, ragged tails)."""
    errs = verify.finite_gather_errors(triton_ops, torch.Generator().manual_seed(99), CPU)
    saved = finite.BR, finite.BC
    finite.BR, finite.BC = 4, 64
    try:
        gen = torch.Generator().manual_seed(5)
        tiny = verify.finite_gather_errors(triton_ops, gen, CPU, (torch.bfloat16,), ("none", "nan block last"))
        errs += [f"(tiny tiles) {e}" for e in tiny]
    finally:
        finite.BR, finite.BC = saved
    print(f"finite_gather: {'ok' if not errs else f'{len(errs)} mismatches'}")
    return errs


def check_division() -> list[str]:
    """The codecs' division by their group scales (``common.div_by_groups``: one division per group, then a
    product and two FMAs per value) == ``div_rn`` bit for bit, on a slice of the GPU's exhaustive check
    (``verify.division_errors``: 8 of the 128 bf16 mantissas of the divisor, the first 4096 fp32 mantissas
    of the dividend, in each regime); the companding's division (``common.div_companding``) on the 4096 ``|y|``
    around 2^-100, where the check turns from quotients to codes, and the branch-free square root
    (``common.sqrt_fast``) on the 4096 from 2^-100 up, its smallest operands (the interpreter
    runs their ``div_rn`` / ``sqrt_rn`` branches: the hardware sequences are checked on the GPU, ``bench.kernels``)."""
    errs = verify.division_errors(CPU, **verify.DIVISION_SLICE)
    print(f"division: {'ok' if not errs else f'{len(errs)} mismatches'}")
    return errs


def check_fallbacks() -> list[str]:
    """Operands the kernels do not cover go to the twin (still drop-in): bf16 update, per-element bc;
    strided in-place operands go through the kernels via contiguous copies."""
    gen = torch.Generator().manual_seed(7)
    errs = []
    c = verify.case_apply((3, 40), "state", gen, CPU)
    c.kwargs["u"] = c.kwargs["u"].bfloat16()
    errs += verify.run_case(c, triton_ops)
    c = verify.case_rotated_adam((3, 40), "state", gen, CPU)
    c.kwargs["bc1"] = 0.5 + torch.rand(3, 40, generator=gen)  # not constant along the rows
    errs += verify.run_case(c, triton_ops)
    c = verify.case_factor((2,), 9, "state", gen, CPU)
    c.kwargs["outer"] = c.kwargs["outer"].double()  # not fp32
    errs += verify.run_case(c, triton_ops)
    c = verify.case_complement_update((3, 4, 9), "exact", gen, CPU)
    c.kwargs["bc2"] = 0.5 + torch.rand(3, 4, 1, generator=gen)  # per row, not per block: the twin refuses it
    try:
        triton_ops.complement_update(**c.kwargs)
        errs.append("complement_update with a bc2 per row did not raise")
    except ValueError as e:
        if "bc2" not in str(e):
            errs.append(f"complement_update with a bc2 per row: unclear error {e}")
    c = verify.case_complement_update((2, 4, 9), "exact", gen, CPU)
    c.kwargs["m"] = c.kwargs["m"].double()  # not fp32
    c.kwargs["xm"], c.kwargs["ym"] = c.kwargs["xm"].double(), c.kwargs["ym"].double()
    errs += verify.run_case(c, triton_ops)
    c = verify.case_residual((2, 4, 9, 3), "exact", gen, CPU)
    c.kwargs["y"] = c.kwargs["y"][:, :, :2]  # ranks of X and Y differ: the twin's matmul error, not a silent kernel
    try:
        triton_ops.residual_sumsq(**c.kwargs)
        errs.append("residual_sumsq with mismatched X, Y ranks did not raise")
    except RuntimeError:
        pass
    # in-place operands that are strided views: written through a contiguous copy and back
    c = verify.case_adamw((4, 50), "state", gen, CPU)
    ref = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in c.kwargs.items()}
    reference.adamw_(**ref)
    kw = dict(c.kwargs)
    for k in c.inplace:
        t = c.kwargs[k]
        holder = torch.zeros(*t.shape, 2, dtype=t.dtype)
        holder[..., 1] = t
        kw[k] = holder[..., 1]  # non-contiguous view with the same values
        assert not kw[k].is_contiguous()
    triton_ops.adamw_(**kw)
    for k in c.inplace:
        errs += [f"strided adamw_ {e}" for e in verify.compare(k, kw[k], ref[k])]
    c = verify.case_factor((3,), 21, "state", gen, CPU)
    ref = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in c.kwargs.items()}
    reference.factor_ema_corr_(**ref)
    kw = dict(c.kwargs)
    kw["codes"] = c.kwargs["codes"].mT.contiguous().mT  # column-major view, same values
    kw["diag"] = torch.stack([c.kwargs["diag"], c.kwargs["diag"]], dim=-1)[..., 0]
    assert not kw["codes"].is_contiguous() and not kw["diag"].is_contiguous()
    triton_ops.factor_ema_corr_(**kw)
    for k in c.inplace:
        errs += [f"strided factor_ema_corr_ {e}" for e in verify.compare(k, kw[k], ref[k], exact=k in c.exact)]
    # the low-rank kernels with every (B, m, n) operand and factor a transposed view: read through copies
    c = verify.case_complement_update((3, 7, 40), "exact", gen, CPU, bc=("tensor", "tensor"), k=(3, 5))
    kw = {k: v.mT.contiguous().mT if isinstance(v, torch.Tensor) and v.dim() == 3 else v for k, v in c.kwargs.items()}
    assert not kw["m"].is_contiguous() and not kw["xu"].is_contiguous()
    want = reference.complement_update(**c.kwargs)
    errs += [
        f"strided complement_update {e}"
        for e in verify.compare("u", triton_ops.complement_update(**kw), want, exact=True)
    ]
    c = verify.case_residual((3, 7, 40, 5), "exact", gen, CPU)
    kw = {k: v.mT.contiguous().mT for k, v in c.kwargs.items()}
    got, want = triton_ops.residual_sumsq(**kw), reference.residual_sumsq(**c.kwargs)
    errs += [f"strided residual_sumsq {e}" for e in verify.compare("sums", got, want, rtol=c.rtol)]
    # residual_stats: statistics rows that are strided views are updated through copies; float64 ones fall back
    c = verify.case_residual_stats((3, 7, 40, 5), "exact", gen, CPU, mask="some")
    ref = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in c.kwargs.items()}
    want = reference.residual_stats(**ref)
    kw = dict(c.kwargs)
    for k in c.inplace:
        kw[k] = torch.stack([c.kwargs[k], c.kwargs[k]], dim=-1)[..., 0]
        assert not kw[k].is_contiguous()
    got = triton_ops.residual_stats(**kw)
    errs += [f"strided residual_stats {e}" for e in verify.compare("returned", got, want, rtol=c.rtol)]
    for k in c.inplace:
        errs += [f"strided residual_stats {e}" for e in verify.compare(k, kw[k], ref[k], rtol=c.inplace_rtol)]
    c = verify.case_residual_stats((2, 5, 9, 3), "exact", gen, CPU)
    c.kwargs["g_col"] = c.kwargs["g_col"].double()
    errs += verify.run_case(c, triton_ops)
    return errs


HYPER_STEPS = [(1e-3, 0.1, 1), (3e-4, 0.0, 2), (2e-2, 0.01, 7), (0.37, 1.3, 30), (1e-2, 0.1, 1000)]
"""(lr, wd, t) of :func:`check_hyper`, with ``bc1 = 1 - 0.9^t``, ``bc2 = 1 - 0.95^t``."""


def hyper_cases(gen: torch.Generator, device: torch.device = CPU) -> list[verify.Case]:
    """Fresh random cases of every kernel that takes ``hyper``, at odd shapes, for each of
    :data:`HYPER_STEPS` (:func:`verify.with_hyper`: the row holds the step's values, the float
    arguments decoys)."""
    rows = [(1, 1), (3, 33), (2, 5, 95), (7, 64), (3, 18), (4099,)]
    comp = [(3, 5, 95), (1, 33, 17), (2, 70, 65), (3, 19, 300), (1, 3, 7)]
    weights = ((torch.bfloat16, 8), (torch.bfloat16, 16), (torch.float32, 0))
    out = []
    for i, (lr, wd, t) in enumerate(HYPER_STEPS):
        bc1, bc2 = 1 - 0.9**t, 1 - 0.95**t
        shape = rows[i % len(rows)]
        mode = ("state", "overwrite")[i % 2]
        built = [verify.case_rotated_adam(shape, mode, gen, device, bc=("float", "float"))]
        for wdtype, bits in weights:
            built.append(verify.case_apply(shape, "state", gen, device, wdtype, bits))
            built.append(verify.case_adamw(rows[(i + 1) % len(rows)], "state", gen, device, wdtype, bits))
        ks = ((16, 33), (1, 40), (0, 5), (40, 2), (3, 7))[i]
        shape3 = comp[i % len(comp)]
        built.append(verify.case_complement_update(shape3, "exact", gen, device, k=ks))
        built.append(verify.case_complement_update(shape3, "exact", gen, device, k=ks, apply=weights[i % 3]))
        if i < 2:  # inexact products: the same on both sides, as both run the kernel
            built.append(verify.case_complement_update((2, 70, 90), "dense", gen, device, k=(37, 70), apply=weights[i]))
        out += [verify.with_hyper(c, lr, wd, bc1, bc2) for c in built]
    return out


def check_hyper(device: torch.device = CPU) -> list[str]:
    """Each kernel that takes ``hyper`` gives, with the step's values in a ``StepScalars`` row, bit for bit
    what it gives with them as floats (every in-place tensor and the returned one). Not vacuous: neither
    call may fall back to the twin, and the call with the decoys as floats must give something else."""
    gen = torch.Generator().manual_seed(2024)
    errs: list[str] = []
    fell_back: list[str] = []
    saved = {k: getattr(reference, k) for k in HYPER_KERNELS}

    def recorder(name, fn):
        def wrapped(*a, **kw):
            fell_back.append(name)
            return fn(*a, **kw)

        return wrapped

    def run(case, kw):
        kw = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
        out = getattr(triton_ops, case.kernel)(**kw)
        return kw, out

    cases = hyper_cases(gen, device)
    try:
        for k in HYPER_KERNELS:
            setattr(reference, k, recorder(k, saved[k]))
        for case in cases:
            tag = f"{case.kernel} [{case.label}]"
            kw_h, out_h = run(case, case.kwargs)
            kw_f, out_f = run(case, verify.float_kwargs(case))
            decoys = {k: v for k, v in case.kwargs.items() if k != "hyper"}
            kw_d, out_d = run(case, decoys)
            if fell_back:
                errs.append(f"{tag}: fell back to the twin ({fell_back})")
                fell_back.clear()
            tensors = [k for k, v in case.kwargs.items() if isinstance(v, torch.Tensor)]  # in place or not
            found = verify.compare("returned", out_h, out_f, exact=True)
            for name in tensors:
                found += verify.compare(name, kw_h[name], kw_f[name], exact=True)
            errs += [f"{tag} hyper vs floats: {e}" for e in found]
            moved = verify.compare("returned", out_d, out_f, exact=True)
            for name in tensors:
                moved += verify.compare(name, kw_d[name], kw_f[name], exact=True)
            if not moved:
                errs.append(f"{tag}: the decoy floats give the same results (the check would not see them read)")
    finally:
        for k, fn in saved.items():
            setattr(reference, k, fn)
    print(f"hyper: {len(cases)} cases, {'ok' if not errs else f'{len(errs)} mismatches'}")
    return errs


class Counter:
    """Counts calls into the Triton ops and into the twins, to prove the end-to-end run used the kernels."""

    def __init__(self) -> None:
        self.calls = {("triton", k): 0 for k in verify.KERNELS} | {("reference", k): 0 for k in verify.KERNELS}
        for mod_name, mod in (("triton", triton_ops), ("reference", reference)):
            for k in verify.KERNELS:
                setattr(mod, k, self._wrap(mod_name, k, getattr(mod, k)))

    def _wrap(self, mod_name, k, fn):
        def wrapped(*a, **kw):
            self.calls[(mod_name, k)] += 1
            return fn(*a, **kw)

        return wrapped

    def reset(self) -> None:
        for key in self.calls:
            self.calls[key] = 0


def _mlp(d: int, dtype: torch.dtype, hidden: int | None = None) -> torch.nn.Module:
    torch.manual_seed(0)
    h = hidden or d
    return torch.nn.Sequential(torch.nn.Linear(d, h), torch.nn.Tanh(), torch.nn.Linear(h, d)).to(dtype)


def check_end_to_end(counter: Counter) -> list[str]:
    """SCAO steps through the kernels (interpreter) == SCAO steps through the twins, bit for bit.

    ``complement_update`` only runs with truncated bases. Where it or
    ``residual_sumsq`` (stream sides) runs, products and sums of squares are summed in another
    order by the kernels than by torch, so those runs match within a tolerance: 2^-10
    of each weight plus 1e-6 (a few fp32 ulps of the update, through a few steps; a bf16 ulp is
    2^-8), and the update of each step must still have moved every weight."""
    errs = []
    stream = {"rank_max": 4, "rank_min": 2, "full_factor_dim": 8}  # stream sides with truncated bases
    quantized = set(verify.KERNELS) - {"complement_update", "residual_sumsq", "residual_stats"}
    variants = [  # (name, dtype, SCAO kwargs, kernels the run must call)
        ("fp32", torch.float32, {}, quantized),
        ("bf16+int8", torch.bfloat16, {}, quantized),
        ("bf16+int16 rank_max 4", torch.bfloat16, {"correction_bits": 16, "rank_max": 4, "rank_min": 2}, quantized),
        ("bf16+int16 stream truncated", torch.bfloat16, {"correction_bits": 16, **stream},
         quantized - {"factor_ema_corr_", "apply_update_"} | {"complement_update", "residual_stats"}),
        ("bf16+int8 stream truncated, norm graft (update returned, then applied)", torch.bfloat16,
         {"graft": "norm", **stream}, quantized - {"factor_ema_corr_"} | {"complement_update", "residual_stats"}),
        ("fp32 unquantized stream truncated", torch.float32, {"quantize": False, **stream},
         {"apply_update_", "complement_update", "residual_stats"}),
        # (fp32 weights: with bf16 ones a rounding flip, one bf16 ulp, exceeds the tolerance; the bf16 path of
        # the blocks is check_weight_blocks')
        ("fp32 stream truncated, hidden 64 cut at 32 (column blocks updated where they live)", torch.float32,
         {"max_precond_dim": 32, "_hidden": 64, **stream}, {"complement_update", "residual_stats"}),
    ]  # fmt: skip
    d = 20
    g = torch.Generator().manual_seed(3)
    wt = torch.randn(d, d, generator=g)
    data = [(x, torch.tanh(x @ wt)) for x in (torch.randn(32, d, generator=g) for _ in range(8))]
    for name, dtype, kw, expect in variants:
        kw = dict(kw)
        hidden = kw.pop("_hidden", None)
        m_k, m_r = _mlp(d, dtype, hidden), _mlp(d, dtype, hidden)
        o_k = SCAO(m_k.parameters(), lr=1e-2, min_precond_dim=2, precond_freq=3, **kw)
        o_r = SCAO(m_r.parameters(), lr=1e-2, min_precond_dim=2, precond_freq=3, **kw)
        start = copy.deepcopy(list(m_k.parameters()))
        used: dict[str, int] = dict.fromkeys(verify.KERNELS, 0)
        for x, y in data:
            counter.reset()
            o_k.zero_grad()
            (m_k(x.to(dtype)) - y.to(dtype)).float().square().mean().backward()
            o_k.step()
            for k in verify.KERNELS:
                used[k] += counter.calls[("triton", k)]
                if counter.calls[("reference", k)]:
                    errs.append(f"{name}: kernel path fell back to the twin for {k}")
            with kernels.use_reference():
                o_r.zero_grad()
                (m_r(x.to(dtype)) - y.to(dtype)).float().square().mean().backward()
                o_r.step()
        # other summation orders (docstring)
        close = used["complement_update"] + used["residual_sumsq"] + used["residual_stats"] > 0
        for (pn, a), b, s in zip(m_k.named_parameters(), m_r.parameters(), start):
            if close and torch.allclose(a.float(), b.float(), rtol=2**-10, atol=1e-6):
                pass
            elif not torch.equal(a, b):
                diff = (a.float() - b.float()).abs().max().item()
                errs.append(f"{name}: param {pn} differs from the reference run (max |diff| {diff:.3e})")
            if torch.equal(a, s):
                errs.append(f"{name}: param {pn} never moved (vacuous comparison)")
        missing = [k for k, n in used.items() if n == 0 and k in expect]
        if missing:
            errs.append(f"{name}: kernels never called: {missing}")
        print(f"end-to-end {name}: kernel calls {used}")
    return errs


def check_weight_blocks(device: torch.device = CPU) -> list[str]:
    """``complement_update`` applied to weight blocks that live inside wider weights (``WeightBlocks``: the
    right halves of (m, 2n) weights, through their address table) == the twin on the stacked blocks, bit
    for bit (exact products), the left halves untouched, the weights moved. (On a GPU too:
    ``bench/session_zw.sh``.)"""
    errs = []
    gen = torch.Generator().manual_seed(5)
    for wdtype, bits in ((torch.bfloat16, 8), (torch.bfloat16, 16), (torch.float32, 0)):
        for shape, bf16 in (((2, 64, 128), "shared"), ((3, 19, 96), "shared"), ((2, 33, 160), None)):
            ap = (wdtype, bits)
            case = verify.case_complement_update(shape, "exact", gen, device, k=(32, 32), bf16=bf16, apply=ap)
            kw = case.kwargs
            B, M, N = shape
            wide = torch.randn(B, M, 2 * N, generator=gen).to(device, wdtype)
            wide[..., N:] = kw["w"]
            left = wide[..., :N].clone()
            views = [wide[b, :, N:] for b in range(B)]
            blocks = reference.WeightBlocks.of(views, torch.tensor([v.data_ptr() for v in views], device=device))
            if blocks is None:
                errs.append(f"weight blocks {shape}: refused, though 64-byte aligned")
                continue
            want = {k: v.clone() if torch.is_tensor(v) else v for k, v in kw.items()}
            got = {**{k: v.clone() if torch.is_tensor(v) else v for k, v in kw.items()}, "w": blocks}
            reference.complement_update(**want)
            triton_ops.complement_update(**got)
            label = f"{str(wdtype)[6:]}+{bits} {shape} {bf16}"
            if not torch.equal(wide[..., N:], want["w"]):
                errs.append(f"weight blocks [{label}]: weights differ from the twin's")
            if want["rho"] is not None and not torch.equal(got["rho"], want["rho"]):
                errs.append(f"weight blocks [{label}]: correction bits differ from the twin's")
            if not torch.equal(wide[..., :N], left):
                errs.append(f"weight blocks [{label}]: wrote outside the blocks")
            if torch.equal(want["w"], kw["w"]):
                errs.append(f"weight blocks [{label}]: the weights did not move (vacuous)")
    odd = torch.zeros(2, 8, 2 * 70, dtype=torch.bfloat16, device=device)[..., 70:]  # 140-byte offsets
    if reference.WeightBlocks.of(list(odd), torch.tensor([v.data_ptr() for v in odd], device=device)) is not None:
        errs.append("weight blocks: accepted blocks that do not start on 64-byte boundaries")
    return errs


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if os.environ.get("TRITON_INTERPRET") != "1" or os.environ.get("SCAO_TRITON_ON_CPU") != "1":
        print("needs TRITON_INTERPRET=1 and SCAO_TRITON_ON_CPU=1", file=sys.stderr)
        return 2
    results: dict[str, list[str]] = {}
    t0 = time.perf_counter()
    checks = (("kernels", check_kernels), ("fallbacks", check_fallbacks), ("hyper", check_hyper),
              ("weight_blocks", check_weight_blocks), ("finite_gather", check_finite_gather),
              ("division", check_division))  # fmt: skip
    for name, fn in checks:
        try:
            out = fn()
            results.update(out if isinstance(out, dict) else {name: out})
        except Exception:
            results[name] = [traceback.format_exc()]
    counter = Counter()
    try:
        results["end_to_end"] = check_end_to_end(counter)
    except Exception:
        results["end_to_end"] = [traceback.format_exc()]
    print(f"kernel checks took {time.perf_counter() - t0:.1f}s")
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
