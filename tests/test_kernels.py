"""Triton kernels == their plain-torch twins, under the Triton interpreter on CPU.

Triton reads ``TRITON_INTERPRET`` when kernels are decorated, and the rest of the suite imports
``scao_dist`` without it, so the comparisons run in child processes (started together, once per
module): ``tests/kernel_checks.py`` (every kernel on small odd shapes with poisoned outputs, with
the step's scalars as floats and from a ``StepScalars`` row, the fallbacks, each kernel with a row vs
with the floats, and SCAO end to end through the kernels vs through the twins),
``python -m bench.kernels --dry-run`` (the benchmark's CPU-side logic), and, without the
interpreter, ``tests/kernel_compile.py`` (every launched variant compiled for sm_90, PTX checked
for IEEE arithmetic). Tolerances: integer and bf16 outputs bit for bit, fp32 outputs within 2^-22
relative, 2-4 ulp (see ``scao_dist/kernels/verify.py``), the end-to-end parameters bit for bit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 240


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kernels")
    env = {**os.environ, "TRITON_INTERPRET": "1", "SCAO_TRITON_ON_CPU": "1", "OMP_NUM_THREADS": "1"}
    env.pop("SCAO_REFERENCE_KERNELS", None)
    checks_out, bench_out, compile_out = tmp / "checks.json", tmp / "bench.json", tmp / "compile.json"
    env_gpu = {k: v for k, v in env.items() if k not in ("TRITON_INTERPRET", "SCAO_TRITON_ON_CPU")}
    procs = {
        "checks": subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "kernel_checks.py"), "--out", str(checks_out)],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        ),
        "bench": subprocess.Popen(
            [sys.executable, "-m", "bench.kernels", "--dry-run", "--out", str(bench_out)],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        ),
        "compile": subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "kernel_compile.py"), "--out", str(compile_out)],
            cwd=ROOT, env=env_gpu, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        ),
    }  # fmt: skip
    logs = {}
    for name, p in procs.items():
        try:
            logs[name], _ = p.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            p.kill()
            logs[name] = p.communicate()[0] + f"\n(timed out after {TIMEOUT}s)"
    checks = json.loads(checks_out.read_text()) if checks_out.exists() else None
    bench = json.loads(bench_out.read_text()) if bench_out.exists() else None
    comp = json.loads(compile_out.read_text()) if compile_out.exists() else None
    rc = {k: p.returncode for k, p in procs.items()}
    return {"checks": checks, "bench": bench, "compile": comp, "logs": logs, "rc": rc}


def _results(runs) -> dict[str, list[str]]:
    assert runs["checks"] is not None, f"kernel checks did not finish:\n{runs['logs']['checks'][-4000:]}"
    return runs["checks"]


def _assert_clean(runs, key: str) -> None:
    res = _results(runs)
    assert key in res, f"no result for {key}:\n{runs['logs']['checks'][-4000:]}"
    errs = res[key]
    assert not errs, f"{len(errs)} mismatches:\n" + "\n".join(errs[:30])


KERNELS = [
    "ema_signed_",
    "rotated_adam_",
    "apply_update_",
    "factor_ema_corr_",
    "adamw_",
    "residual_sumsq",
    "residual_stats",
    "complement_update",
]


@pytest.mark.parametrize("kernel", KERNELS)
def test_kernel_matches_twin(runs, kernel):
    """Bit-exact codes/bits/scales/weights, fp32 within 2-4 ulp, nothing left unwritten; with ``hyper``
    (a ``StepScalars`` row) for rotated_adam_, apply_update_, adamw_ and complement_update too, each of
    which must have such cases in ``verify.small_cases``."""
    _assert_clean(runs, kernel)


def test_finite_check_with_gather_matches_twin(runs):
    """The step's NaN/inf check fused with the gradients' copies: the flag equal to the twin's and to what was
    planted (NaN, +-inf in a checked tensor or a copied block; a NaN outside a copied block does not count),
    the poisoned destinations bit for bit the blocks, for bf16, fp16, fp32 and the twin's share (fp64)."""
    _assert_clean(runs, "finite_gather")


def test_group_division_matches_div_rn(runs):
    """The codecs divide a group's values by its scale with one division per group and Markstein's correction
    per value (``common.div_by_groups``): bit for bit ``div_rn`` on every case checked (near 1, at the smallest
    and largest divisors of that path), so every code and the twins' equality rest on it."""
    _assert_clean(runs, "division")


def test_kernels_with_step_scalars_match_kernels_with_floats(runs):
    """Each kernel reading lr, 1 - lr wd and the bias corrections from a ``StepScalars`` row gives, bit for
    bit, what it gives with them as float arguments (odd shapes, t = 1 .. 1000); without falling back to
    the twin, and with decoy floats that would change the result."""
    _assert_clean(runs, "hyper")


def test_uncovered_operands_fall_back_and_strided_operands_work(runs):
    """bf16 updates / per-element bias corrections go to the twin; strided in-place tensors are written back."""
    _assert_clean(runs, "fallbacks")


def test_optimizer_through_kernels_matches_reference(runs):
    """A few SCAO steps (fp32, bf16+int8, bf16+int16, truncated stream bases) give the same bits both ways."""
    _assert_clean(runs, "end_to_end")


def test_complement_updates_weight_blocks_where_they_live(runs):
    """Column blocks of wider weights, updated through their address table, equal the twin on the stacked
    blocks bit for bit and nothing outside them is written."""
    _assert_clean(runs, "weight_blocks")


def test_kernel_checks_exit_cleanly(runs):
    assert runs["rc"]["checks"] == 0, runs["logs"]["checks"][-4000:]


def test_bench_dry_run(runs):
    """``python -m bench.kernels --dry-run`` verifies, times and writes its JSON/table on CPU."""
    out = runs["bench"]
    assert runs["rc"]["bench"] == 0 and out is not None, runs["logs"]["bench"][-4000:]
    assert out["dry_run"] and out["verify"]["ok"], out["verify"]["failures"]
    kernels = {r["kernel"] for r in out["kernels"]}
    assert kernels == {*KERNELS, "finite_gather"}
    assert out["verify"]["cases"]["finite_gather"] == 1  # (its own suite ran in the verification)
    assert out["verify"]["cases"]["division"] == 1
    for r in out["kernels"]:
        assert r["bytes"] > 0 and r["ms"] > 0 and r["twin_ms"] > 0 and r["gbps"] > 0
    assert out["copy"]["gbps"] > 0 and "| kernel |" in out["markdown"]


def test_kernels_compile_for_sm90_with_ieee_arithmetic(runs):
    """Every variant the tests launch compiles for an H100 without approximate div/sqrt, FTZ or FMA."""
    out = runs["compile"]
    assert runs["rc"]["compile"] == 0 and out is not None, runs["logs"]["compile"][-4000:]
    if "skipped" in out:
        pytest.skip(out["skipped"][0])
    assert not out["compile"], "\n".join(out["compile"][:10])
    assert int(out["variants"][0]) >= 10


def test_moment_kernels_compile_once_for_every_basis_width(runs):
    """A refresh that grows a basis (16 columns at a time) must not need a new Triton variant."""
    out = runs["compile"]
    assert runs["rc"]["compile"] == 0 and out is not None, runs["logs"]["compile"][-4000:]
    if "skipped" in out:
        pytest.skip(out["skipped"][0])
    assert out["widths"] == [], "\n".join(out["widths"])


def _complement_tail_f64(u, back_m, m, row, col, g_row, mask, bc1, bc2, eps):
    """The complement's term of the update in float64, from its definition:
    ``mask (m - back_m)/bc1 / max(sqrt(row_i cs_j / bc2), sqrt(floor / bc2) + eps)``, ``u`` not added."""
    d = {k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in dict(row=row, col=col, g_row=g_row).items()}
    from scao_dist.kernels import reference

    floor = (reference.RES_FLOOR**2) * d["g_row"].mean(-1)
    cs = d["col"] / d["row"].mean(-1, keepdim=True).clamp_min(1e-30)
    per = (bc2 if isinstance(bc2, torch.Tensor) else torch.tensor(bc2)).double().reshape(-1)
    v = d["row"].unsqueeze(-1) * cs.unsqueeze(-2) / per[:, None, None]
    denom = torch.maximum(v.sqrt(), ((floor / per).sqrt() + eps)[:, None, None])
    scale = mask[:, None, None].double() / (bc1.double() if isinstance(bc1, torch.Tensor) else bc1)
    return (m.double() - back_m.double()) / denom * scale


def _written_out_complement_tail(u, back_m, m, row, col, g_row, mask, bc1, bc2, eps):
    """The twin's expression, written out: the denominator's reciprocal from per-row and per-column
    reciprocal roots."""
    from scao_dist.kernels import reference

    res_m = back_m.neg_().add_(m)
    floor = (reference.RES_FLOOR**2) * g_row.mean(-1)
    cs = col / row.mean(-1, keepdim=True).clamp_min(1e-30)
    per = (bc2 if isinstance(bc2, torch.Tensor) else torch.tensor(bc2, dtype=torch.float32)).reshape(-1)
    a = (row / per[:, None]).double().sqrt().float()
    b = cs.double().sqrt().float()
    f = (floor / per).double().sqrt().float()
    t = torch.minimum((1.0 / a)[:, :, None] * (1.0 / b)[:, None, :], (1.0 / (f + eps))[:, None, None])
    res_m.mul_(t).mul_(mask[:, None, None] / bc1)
    return u.add_(res_m)


def test_complement_twin_is_its_expression_and_its_math_within_ulps():
    """``reference.complement_add_`` (what the CPU optimizer runs) == its expression written out, bit for
    bit, and == its definition in float64 (``/ max(sqrt(r c / bc2), sqrt(floor / bc2) + eps)`` per element)
    within a few fp32 ulps (two reciprocals and their product, each rounded): random signs and
    wide magnitudes, zero rows/cols/blocks/residuals, mixed masks, float and per-block bc, odd sizes,
    B = 1 and 3; plus the in-place contract (``u`` returned, updated in place)."""
    from scao_dist.kernels import reference

    gen = torch.Generator().manual_seed(11)

    def wide(*shape):
        return torch.randn(*shape, generator=gen) * torch.pow(10.0, torch.rand(*shape, generator=gen) * 20 - 10)

    assert reference.RES_FLOOR == 3e-2
    checked = moved = 0
    worst = 0.0
    for trial, (B, M, N) in enumerate([(1, 1, 1), (3, 1, 7), (1, 33, 17), (3, 19, 300), (3, 64, 96), (1, 40, 129)]):
        for bc_kind in ("float", "tensor"):
            u, back_m, m = wide(B, M, N), wide(B, M, N), wide(B, M, N)
            zero = torch.rand(B, M, 1, generator=gen) < 0.2
            back_m.masked_fill_(zero, 0.0)
            m.masked_fill_(zero, 0.0)
            row, col, g_row = wide(B, M).square(), wide(B, N).square(), wide(B, M).square()
            row.masked_fill_(torch.rand(B, M, generator=gen) < 0.2, 0.0)
            col.masked_fill_(torch.rand(B, N, generator=gen) < 0.2, 0.0)
            if B > 1:
                row[1], col[1], g_row[1] = 0.0, 0.0, 0.0
                m[2] = back_m[2]  # an exactly zero residual
            mask = torch.rand(B, generator=gen) < 0.6
            mask[trial % B] = True
            if bc_kind == "float":
                bc1, bc2 = 1 - 0.9 ** (trial + 1), 1 - 0.999 ** (trial + 2)
            else:
                bc1 = 0.05 + torch.rand(B, 1, 1, generator=gen)
                bc2 = 0.001 + torch.rand(B, 1, 1, generator=gen)
            args = (row, col, g_row, mask, bc1, bc2, 1e-8)
            want = _written_out_complement_tail(u.clone(), back_m.clone(), m.clone(), *args)
            got_u = u.clone()
            got = reference.complement_add_(got_u, back_m.clone(), m.clone(), *args)
            assert got is got_u
            assert torch.equal(got.view(torch.int32), want.view(torch.int32)), (B, M, N, bc_kind)
            zeros = torch.zeros_like(u)  # the complement's term alone: u = 0 adds it exactly
            term = reference.complement_add_(zeros.clone(), back_m.clone(), m.clone(), *args).double()
            exact = _complement_tail_f64(zeros, back_m, m, *args)
            scale = exact.abs().clamp_min(torch.finfo(torch.float32).tiny)
            normal = (exact.abs() > 1e-30) & exact.isfinite()  # (fp32 subnormal results round coarser)
            assert term[exact.isfinite()].isfinite().all(), (B, M, N, bc_kind)
            if normal.any():
                worst = max(worst, float(((term - exact).abs() / scale)[normal].max()))
            checked += got.numel()
            moved += int((got != u).sum())
    assert checked > 30_000 and moved > checked // 4  # not vacuous: the update changes most of u
    assert 0.0 < worst < 2.0**-20, worst  # a few ulps of the term; not bit for bit (the roots round apart)


def _magic_quotient(n: int, m: int, s: int) -> int:
    """``common.div_magic`` in Python integers: ``umulhi(2n, m) >> s`` on 32 unsigned bits."""
    return ((2 * n) * (m & 0xFFFFFFFF) >> 32) >> s


@settings(max_examples=400, deadline=None)
@given(d=st.integers(1, (1 << 31) - 1), n=st.integers(0, (1 << 30) - 1))
def test_magic_divisor_is_floor_division(d, n):
    """The group kernels' row index ``g // G`` by a high product and a shift (``common.magic_divisor``) == the
    integer division for any divisor and any dividend below ``MAX_GROUPS``; the multiplier fits 32 bits."""
    from scao_dist.kernels.common import MAX_GROUPS, magic_divisor

    m, s = magic_divisor(d)
    assert -(1 << 31) <= m < 1 << 31 and 0 <= s < 31
    for k in (n, MAX_GROUPS - 1, d - 1, d, 2 * d - 1, (n // d) * d, (n // d) * d + d - 1):
        if 0 <= k < MAX_GROUPS:
            assert _magic_quotient(k, m, s) == k // d, (d, k)


def test_magic_divisor_small_divisors_every_boundary():
    """Every divisor a row of up to 2^16 scale groups gives, at each multiple's edges up to the top of the range."""
    from scao_dist.kernels.common import MAX_GROUPS, magic_divisor

    for d in [*range(1, 2049), 1 << 16, (1 << 16) - 1, 96, 24]:
        m, s = magic_divisor(d)
        top = (MAX_GROUPS - 1) // d * d
        for q in (*range(0, 40), top // d - 1, top // d):
            for k in (q * d - 1, q * d, q * d + d - 1):
                if 0 <= k < MAX_GROUPS:
                    assert _magic_quotient(k, m, s) == k // d, (d, k)
    with pytest.raises(ValueError, match="divisor"):
        magic_divisor(0)


def test_the_check_copies_what_it_can_widening_included():
    """The NaN/inf check's kernel takes the copies a group with fp32 buffers makes of bf16 / fp16 gradients
    (exact widening, as ``copy_``), same-dtype copies of column blocks, and no narrowing copy or other shapes
    (those go to the twin: ``tests/kernel_checks.py`` compares both sides' results)."""
    from scao_dist.kernels import finite

    parent = torch.randn(6, 100)
    for dt in (torch.bfloat16, torch.float16):
        src = parent.to(dt)[:, 20:60]
        assert finite._segment(src, torch.empty(6, 40)) == (6, 40, 100)
        assert finite._segment(src, torch.empty(6, 40, dtype=dt)) == (6, 40, 100)
    assert finite._segment(parent[:, :40], torch.empty(6, 40, dtype=torch.bfloat16)) is None  # narrowing
    assert finite._segment(parent.bfloat16(), torch.empty(6, 100, dtype=torch.float16)) is None
    assert finite._segment(parent.bfloat16(), torch.empty(100, 6)) is None
    assert finite._segment(parent.bfloat16(), torch.empty(100, 6).mT) is None  # not contiguous
