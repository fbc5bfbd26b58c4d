"""Triton kernels == their plain-torch twins, under the Triton interpreter on CPU.

Triton reads ``TRITON_INTERPRET`` when kernels are decorated, and the rest of the suite imports
``scao_dist`` without it, so the comparisons run in child processes (started together, once per
module): ``tests/kernel_checks.py`` (every kernel on small odd shapes with poisoned outputs, the
fallbacks, and SCAO end to end through the kernels vs through the twins),
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


@pytest.mark.parametrize("kernel", ["ema_signed_", "rotated_adam_", "apply_update_", "factor_ema_corr_", "adamw_"])
def test_kernel_matches_twin(runs, kernel):
    """Bit-exact codes/bits/scales/weights, fp32 within 2-4 ulp, nothing left unwritten."""
    _assert_clean(runs, kernel)


def test_uncovered_operands_fall_back_and_strided_operands_work(runs):
    """bf16 updates / per-element bias corrections go to the twin; strided in-place tensors are written back."""
    _assert_clean(runs, "fallbacks")


def test_optimizer_through_kernels_matches_reference(runs):
    """A few SCAO steps (fp32, bf16+int8, bf16+int16 with truncated bases) give the same bits both ways."""
    _assert_clean(runs, "end_to_end")


def test_kernel_checks_exit_cleanly(runs):
    assert runs["rc"]["checks"] == 0, runs["logs"]["checks"][-4000:]


def test_bench_dry_run(runs):
    """``python -m bench.kernels --dry-run`` verifies, times and writes its JSON/table on CPU."""
    out = runs["bench"]
    assert runs["rc"]["bench"] == 0 and out is not None, runs["logs"]["bench"][-4000:]
    assert out["dry_run"] and out["verify"]["ok"], out["verify"]["failures"]
    kernels = {r["kernel"] for r in out["kernels"]}
    assert kernels == {"ema_signed_", "rotated_adam_", "apply_update_", "factor_ema_corr_", "adamw_"}
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
