"""bench/scaling.py end to end on CPU (gloo), tiny GPT: its launcher starts the ranks, every configuration
writes its JSON and the Markdown table, and SCAO's per-rank optimizer memory halves from N=1 to N=2.
"""

import contextlib
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--device",
    "cpu",
    "--size",
    "tiny",
    "--seq-len",
    "64",
    "--batch-size",
    "4",
    "--steps",
    "4",
    "--warmup",
    "2",
    "--max-bytes",
    "400000",
    "--config-timeout-s",
    "45",
]
NUMBERS = (
    "step_ms_median",
    "step_ms_p99",
    "opt_ms_median",
    "tokens_per_s_per_gpu",
    "opt_bytes_per_param_rank",
    "comm_bytes_per_step_rank",
)


def _scaling(out, *args, timeout):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env["PYTHONPATH"] = os.pathsep.join(x for x in (str(ROOT), env.get("PYTHONPATH")) if x)
    cmd = [sys.executable, "-m", "bench.scaling", *TINY, "--out", str(out), "--time-budget-s", "70", *args]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, (r.stdout + r.stderr)[-5000:]
    return r


def _record(out, name):
    rec = json.loads((out / f"{name}.json").read_text())
    assert rec["status"] == "ok", rec.get("message")
    for key in NUMBERS:
        assert isinstance(rec[key], int | float) and math.isfinite(rec[key]), (name, key, rec[key])
    assert rec["step_ms_p99"] >= rec["step_ms_median"] > 0
    assert rec["tokens_per_s_per_gpu"] > 0 and rec["opt_bytes_per_param_rank"] > 0
    assert rec["weights_in_sync"] is True
    assert all(isinstance(r["triton_variants"], list | type(None)) for r in rec["ranks"])
    assert len(rec["ranks"]) == rec["world_size"] and rec["timed_steps"] == 4
    return rec


@pytest.mark.timeout(150)
def test_scao_one_and_two_ranks(tmp_path):
    r = _scaling(tmp_path, "--nproc", "1,2", "--optimizers", "scao", timeout=120)
    one, two = _record(tmp_path, "scao_n1"), _record(tmp_path, "scao_n2")
    # sharded state: each of two ranks holds about half of what one rank holds
    ratio = two["opt_bytes_per_param_rank"] / one["opt_bytes_per_param_rank"]
    assert abs(ratio / 0.5 - 1) <= 0.15, ratio
    assert abs(two["opt_bytes_all_ranks"] / one["opt_bytes_all_ranks"] - 1) <= 0.15
    # one rank sends nothing; two ranks send a reduce-scatter of bf16 grads + an all-gather of bf16 weights
    params = one["model"]["params"]
    assert one["comm_bytes_per_step_rank"] == 0
    assert 0.9 * 2 * params <= two["comm_bytes_per_step_rank"] <= 1.3 * 2 * params
    table = (tmp_path / "scaling.md").read_text()
    assert table.count("| scao_dist SCAO |") == 2 and "weak-scaling eff." in table
    assert r.stdout.rstrip().endswith(table.rstrip().splitlines()[-1])  # the table is printed last


@pytest.mark.timeout(120)
def test_deepspeed_zero1_one_rank(tmp_path):
    if not os.environ.get("CI"):
        pytest.importorskip("deepspeed")
    _scaling(tmp_path, "--nproc", "1", "--optimizers", "deepspeed", timeout=90)
    rec = _record(tmp_path, "deepspeed_n1")
    rank = rec["ranks"][0]
    assert rank["ds_optimizer"] == "DeepSpeedZeroOptimizer over AdamW"
    assert rank["ds_ops_loaded"] == []  # nothing built or loaded: no JIT compilation
    # one rank: AdamW's two fp32 moments + the fp32 master copy, 12 bytes per parameter; no traffic
    assert abs(rec["opt_bytes_per_param_rank"] - 12.0) < 0.05
    assert rec["comm_bytes_per_step_rank"] == 0
    assert "| DeepSpeed ZeRO-1 AdamW | 1 | ok |" in (tmp_path / "scaling.md").read_text()


def test_triton_variant_log_pairs_builds_with_their_step():
    """``TritonVariants`` (the per-step log of kernel variants built mid-run) records each build at the
    step it started in, pairs the ends in order, and never tells Triton to skip a compile."""
    sys.path.insert(0, str(ROOT))
    from bench.scaling import TritonVariants

    log = TritonVariants()
    log.step = 3
    assert log._start(key=1, repr="_a_kernel[num_warps=4](x: *fp32)") is None
    log.step = 4
    assert log._start(key=2, repr="_b_kernel[num_warps=8](y: i32)") is None
    assert log._end(key=1) is None and log._end(key=2) is None
    assert [e[:2] for e in log.events] == [[3, "_a_kernel"], [4, "_b_kernel"]]
    assert log.events[1][3] == "_b_kernel[num_warps=8](y: i32)"
    assert all(isinstance(e[2], float) and e[2] >= 0 for e in log.events)
    log.close()
    if log.ok:
        from triton import knobs

        assert knobs.runtime.jit_cache_hook is None and knobs.runtime.jit_post_compile_hook is None


def test_slow_steps_summary_names_the_slowest_steps_and_late_variants(tmp_path):
    """``bench.slow_steps`` reports the slowest steps and only the Triton variants built after step 1."""
    sys.path.insert(0, str(ROOT))
    from bench.slow_steps import summary

    variants = [[0, "_a", 80.0, "a()"], [12, "_b", 300.0, "b(n: i32)"]]
    rank = {"warmup_step_ms": [900.0, 5.0, 7.0], "step_ms": [3.0, 40.0, 4.0, 2.0], "counters": {"refreshes": 3},
            "triton_variants": variants}  # fmt: skip
    path = tmp_path / "scao_n1.json"
    path.write_text(json.dumps({"ranks": [rank]}))
    lines = summary(str(path))
    assert "(0, 900.0)" in lines[0] and lines[1].startswith("  step_ms: slowest (index, ms) [(1, 40.0), (2, 4.0)")
    assert "'refreshes': 3" in lines[2] and "'refresh_late': 0" in lines[2]
    assert lines[3].endswith("from step 2 on: [[12, '_b', 300.0]]") and lines[4].strip() == "b(n: i32)"


def test_refresh_summary_reads_the_worker_and_swap_times(tmp_path):
    """``bench.refresh_summary`` prints each run's step time, its time in ``step()``, the refresh
    worker's time and the wait at the swap, from the JSON ``bench.compare --profile-phases`` writes."""
    from bench.refresh_summary import main

    run = {
        "ms_step": {"median": 70.5, "p99": 101.0},
        "ms_opt_step": {"median": 45.25},
        "phases": {"refresh_compute_async_ms": 41.75, "phases": {"refresh_swap": {"device_ms": 17.5}}},
    }
    (tmp_path / "newa").mkdir()
    (tmp_path / "newa" / "large_scao_lr1e-03_s0.json").write_text(json.dumps(run))
    (tmp_path / "newa" / "large_scao_lr1e-03_s1.json").write_text(json.dumps(run))  # seed 1: not read
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main([str(tmp_path), "newa", "missing"]) == 0
    lines = out.getvalue().splitlines()
    assert lines == [
        "newa: ms/step 70.5 p99 101.0, ms in step() 45.25, refresh worker ms/step 41.75, waiting at the swap 17.5"
    ]
