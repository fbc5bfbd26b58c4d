"""CPU smoke run of the benchmark harness (bench/): tiny model, a few steps, every output checked.

Nothing here is timed or compared: the harness's own timings are only checked to be finite numbers.
Anchors (flashoptim, heavyball, scao 0.2.4) run when importable; otherwise they must be reported as
"not_installed" while the suite goes on.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
import tarfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # bench/ is not an installed package: also work under a bare `pytest`
    sys.path.insert(0, str(ROOT))

from bench import compare, report  # noqa: E402
from bench import optimizers as O  # noqa: E402

ANCHORS = {"flash": "flashoptim", "soap": "heavyball", "scao024": "scao"}
CORE = ["adamw", "muon", "scao", "scao_soap"]
TINY = ["--size", "tiny", "--device", "cpu", "--batch-size", "4", "--seq-len", "64", "--max-corpus-bytes", "400000",
        "--warmup", "3", "--eval-every", "4", "--eval-batches", "2", "--timing-skip", "2"]  # fmt: skip


def _finite(x) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def _runs(out: Path) -> dict[str, dict]:
    return {r["name"]: r for r in (json.loads(p.read_text()) for p in out.glob("tiny_*.json"))}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench_smoke")
    opts = CORE + list(ANCHORS)
    rc = compare.main([*TINY, "--steps", "8", "--optimizers", ",".join(opts), "--profile-phases", "3",
                       "--scao-variant", 'scao_b95={"betas": [0.9, 0.95]}', "--out", str(out)])  # fmt: skip
    assert rc == 0
    return out


def test_every_optimizer_reports_finite_numbers(smoke: Path) -> None:
    runs = _runs(smoke)
    assert set(runs) == set(CORE) | set(ANCHORS) | {"scao_b95"}
    for name, r in runs.items():
        if name in ANCHORS and importlib.util.find_spec(ANCHORS[name]) is None:
            assert r["status"] == "not_installed", (name, r["status"], r.get("message"))
            continue
        assert r["status"] == "ok", (name, r["status"], r.get("message"), r.get("traceback"))
        assert r["steps_done"] == 8 and len(r["train_loss"]) == 8
        assert all(_finite(x) for x in r["train_loss"])
        assert [v[0] for v in r["val"]] == [0, 4, 8]
        assert all(_finite(v[1]) and _finite(v[2]) for v in r["val"])
        assert r["val"][-1][1] < r["val"][0][1]  # it learned something
        for key in ("ms_step", "ms_opt_step"):
            assert all(_finite(r[key][k]) for k in ("median", "p99", "mean"))
        assert _finite(r["state_bytes_per_param"]) and r["state_bytes_per_param"] > 0
        assert r["nan_count"] == 0
        assert r["model"]["params"] > 0


def test_state_bytes_match_what_the_optimizers_hold(smoke: Path) -> None:
    runs = _runs(smoke)
    assert runs["adamw"]["state_bytes_per_param"] == pytest.approx(8.0, abs=0.01)  # fp32 m and v (+ step)
    assert runs["muon"]["state_bytes_per_param"] < 8.0  # momentum only on the hidden matrices
    for name in ("scao", "scao_soap", "scao_b95"):
        st = runs[name]["state"]
        assert st["source"] == "scao_dist.memory_report"
        assert st["total"] == sum(st["pieces"].values())
        # the generic walk over the optimizer's objects finds the same bytes as memory_report
        assert st["walk_total"] == pytest.approx(st["total"], rel=0.05), (name, st)
    assert runs["scao"]["weights"] == "bf16" and runs["scao"]["weight_bytes_per_param"] == 2
    assert runs["scao"]["state"]["pieces"]["error_bits"] > 0


def test_phase_breakdown_of_scao_dist(smoke: Path) -> None:
    ph = _runs(smoke)["scao"]["phases"]
    assert ph["steps"] == 3
    phases = ph["phases"]
    for name in ("factors", "rotation", "apply", "unattributed"):
        assert name in phases, (name, ph["notes"])
        assert _finite(phases[name]["host_ms"])
    assert phases["factors"]["calls_per_step"] > 0
    assert sum(p["host_ms"] for p in phases.values()) == pytest.approx(ph["step_host_ms"], rel=0.05, abs=0.5)
    assert "phases" not in _runs(smoke)["adamw"]


def test_report_outputs(smoke: Path) -> None:
    md = (smoke / "results.md").read_text()
    for name in CORE:
        assert f"`{name}`" in md
    assert "### Headline" in md and "### Ratios" in md and "Where scao_dist's step goes" in md
    pngs = sorted(smoke.glob("*.png"))
    assert {p.name.split("_tiny")[0] for p in pngs} == {"loss_vs_step", "loss_vs_seconds"}
    for p in pngs:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    best = json.loads((smoke / "best_lrs.json").read_text())["best_lrs"]["tiny"]
    assert set(CORE) <= set(best)


def test_report_merges_archives_without_double_counting(smoke: Path, tmp_path: Path) -> None:
    tgz = tmp_path / "runs.tgz"
    with tarfile.open(tgz, "w:gz") as tf:
        for p in smoke.glob("tiny_*.json"):
            tf.add(p, arcname=f"x/{p.name}")
    direct = report.load_runs([smoke])
    both = report.load_runs([smoke, tgz])
    assert len(both) == len(direct) == len(list(smoke.glob("tiny_*.json")))
    md = report.render_dir([tgz], tmp_path / "merged", plots=False, brief=True)
    assert "### Headline" in md and "![" not in md


def test_oom_and_budget_are_reported_and_the_suite_goes_on(tmp_path: Path, monkeypatch) -> None:
    real_build = O.build

    def build(spec, *a, **kw):
        if spec.name == "muon":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 GiB (simulated)")
        return real_build(spec, *a, **kw)

    monkeypatch.setattr(O, "build", build)
    out = tmp_path / "oom"
    assert compare.main([*TINY, "--steps", "2", "--optimizers", "muon,adamw", "--out", str(out)]) == 0
    runs = _runs(out)
    assert runs["muon"]["status"] == "oom" and "out of memory" in runs["muon"]["message"]
    assert runs["adamw"]["status"] == "ok"

    out = tmp_path / "budget"  # a budget already spent: every run is skipped, and still reported
    assert compare.main([*TINY, "--steps", "2", "--optimizers", "adamw,scao", "--time-budget-s", "0.001",
                         "--out", str(out)]) == 0  # fmt: skip
    runs = _runs(out)
    assert {r["status"] for r in runs.values()} == {"skipped_budget"}
    assert "skipped_budget" in (out / "results.md").read_text()


def test_lr_plans() -> None:
    assert compare.parse_lrs("adamw=5e-4;scao=1e-3,2e-3") == {"adamw": [5e-4], "scao": [1e-3, 2e-3]}
    assert compare.parse_lrs('{"muon": 0.002}') == {"muon": [2e-3]}
    assert compare.parse_lrs('{"best_lrs": {"small": {"adamw": 0.0005}}}') == {"adamw": [5e-4]}
    args = compare.parse_args(["--sweep", "--optimizers", "adamw,scao", "--lrs", "scao=1e-3", "--seeds", "0,1"])
    specs = {n: O.make_spec(n) for n in ("adamw", "scao")}
    runs = compare.plan_runs(args, specs)
    assert sorted(r.lr for r in runs if r.name == "adamw" and r.seed == 0) == O.DEFAULT_SWEEP_LRS["adamw"]
    assert [r.lr for r in runs if r.name == "scao"] == [1e-3, 1e-3]
    assert runs[0].name == "adamw" and runs[0].lr == O.DEFAULT_BEST_LR["adamw"]  # nearest the known best first
    assert compare.lr_factor(0, 50, 1500, 0.1) == pytest.approx(1 / 50)
    assert compare.lr_factor(49, 50, 1500, 0.1) == pytest.approx(1.0)
    assert compare.lr_factor(1500, 50, 1500, 0.1) == pytest.approx(0.1)


# ------------------------------------------------------------------------ several processes on one GPU
def test_shards_partition_the_plan() -> None:
    args = compare.parse_args(["--sweep", "--optimizers", "adamw,muon,scao", "--seeds", "0,1"])
    plan = compare.plan_runs(args, {n: O.make_spec(n) for n in ("adamw", "muon", "scao")})
    assert len(plan) == 24
    for k in (1, 2, 3, 5, 7, 30):
        parts = [compare.shard_runs(plan, i, k) for i in range(k)]
        taken = sorted(j for part in parts for j, _ in part)
        assert taken == list(range(len(plan)))  # every run exactly once
        for i, part in enumerate(parts):
            assert all(j % k == i and plan[j] is r for j, r in part)
            assert [j for j, _ in part] == sorted(j for j, _ in part)  # in the plan's order
    assert compare.parse_shard("1/4") == (1, 4)
    assert compare.parse_args([]).shard == (0, 1)


@pytest.mark.parametrize("bad", ["3/2", "2/2", "-1/2", "0/0", "1", "a/b", "1/2/3"])
def test_shard_flag_is_validated(bad: str, capsys) -> None:
    with pytest.raises(SystemExit):
        compare.parse_args([f"--shard={bad}"])
    err = capsys.readouterr().err
    assert "--shard" in err and "I/K" in err and repr(bad) in err


def test_fit_steps_is_refused_with_several_shards(capsys) -> None:
    assert compare.parse_args(["--fit-steps", "--shard", "0/1"]).fit_steps
    with pytest.raises(SystemExit):
        compare.parse_args(["--fit-steps", "--shard", "0/2"])
    assert "--fit-steps cannot be combined with --shard 0/2" in capsys.readouterr().err


def _table_rows(md: str, heading: str) -> list[dict[str, str]]:
    """The rows of the first Markdown table after ``heading``, as {header: cell}."""
    lines = md[md.index(heading) :].splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("| "))
    hdr = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for ln in lines[start + 2 :]:
        if not ln.startswith("| "):
            break
        rows.append(dict(zip(hdr, (c.strip() for c in ln.strip("|").split("|")))))
    return rows


def test_a_shard_runs_its_part_and_the_report_drops_its_timings(tmp_path: Path) -> None:
    out = tmp_path / "shard"
    argv = [*TINY, "--steps", "2", "--optimizers", "adamw", "--lrs", "adamw=5e-4,1e-3,2e-3", "--shard", "0/2",
            "--out", str(out)]  # fmt: skip
    assert compare.main(argv) == 0
    recs = {json.loads(p.read_text())["lr"]: json.loads(p.read_text()) for p in out.glob("tiny_*.json")}
    assert sorted(recs) == [5e-4, 2e-3]  # plan indices 0 and 2 of 3
    for r in recs.values():
        assert r["status"] == "ok" and r["concurrent_shards"] == 2 and r["shard"] == "0/2"
        assert _finite(r["ms_step"]["median"])  # measured and kept in the JSON, only not reported
    assert not (out / "results.md").exists()  # no shard writes the report: the others may still be running
    ids = {p.name: json.loads(p.read_text())["run_id"] for p in out.glob("*.json")}
    assert compare.main([*argv, "--skip-existing"]) == 0  # per shard: its finished runs are kept
    assert {p.name: json.loads(p.read_text())["run_id"] for p in out.glob("*.json")} == ids

    md = report.render_dir([out], out)
    (row,) = _table_rows(md, "### Headline")
    for cell in ("ms/step", "p99", "ms in step", "s→target"):
        assert row[cell] == "—", (cell, row)
    assert row["val@2"] != "—" and row["steps→target"] != "—"  # losses are still reported
    assert "shared the GPU with other runs (up to 2 at once" in md
    assert "--shard I/2 (I = 0..1)" in md
    assert [p.name for p in out.glob("loss_vs_*.png")] == ["loss_vs_step_tiny_2.png"]

    alone = tmp_path / "alone"  # the same records as if each had the device to itself: timings come back
    alone.mkdir()
    for p in out.glob("tiny_*.json"):
        (alone / p.name).write_text(p.read_text().replace('"concurrent_shards": 2', '"concurrent_shards": 1'))
    md = report.render_dir([alone], alone)
    (row,) = _table_rows(md, "### Headline")
    assert all(row[c] != "—" for c in ("ms/step", "p99", "ms in step")), row
    assert "shared the GPU" not in md
    assert sorted(p.name.split("_tiny")[0] for p in alone.glob("loss_vs_*.png")) == ["loss_vs_seconds", "loss_vs_step"]

    # two seeds at one lr, one alone and one shared: the timing columns come from the one alone only
    a = json.loads((out / "tiny_adamw_lr5e-04_s0.json").read_text())
    b = {**json.loads(json.dumps(a)), "seed": 1, "concurrent_shards": 1, "ms_step": {"median": 123.0, "p99": 130.0}}
    row = report.row_for("adamw", [a, b], 5e-4, None, [])
    assert row["ms"] == 123.0 and row["p99"] == 130.0 and row["seeds"] == 2 and row["shared"] == 2


def test_gpu_session_script_parses() -> None:
    import shutil
    import subprocess

    if shutil.which("bash") is None:
        pytest.skip("no bash")
    script = ROOT / "bench" / "gpu_session.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    assert '--shard "$i/$PARALLEL"' in script.read_text()


def test_device_timeline_counts_busy_time_and_idle_gaps() -> None:
    """Overlapping kernels count once; the gaps between them are measured and named by what ended them."""
    from bench.step_profile import device_timeline

    def k(ts, dur, name, cat="kernel"):
        return {"ph": "X", "cat": cat, "ts": ts, "dur": dur, "name": name}

    trace = {"traceEvents": [
        k(0, 10, "a"), k(5, 10, "b"),  # overlap: busy 0..15
        k(40, 5, "c", "gpu_memcpy"),  # 25 us gap before it
        k(46, 4, "d"),  # 1 us gap
        {"ph": "X", "cat": "cpu_op", "ts": 15, "dur": 100, "name": "host"},  # not GPU work
    ]}  # fmt: skip
    tl = device_timeline(trace, n=2)
    assert tl["busy_ms_per_step"] == round(24 / 1e3 / 2, 3)
    assert tl["span_ms_per_step"] == round(50 / 1e3 / 2, 3)
    assert tl["gaps_per_step"] == 1.0 and tl["longest_gaps_us"][0] == [25, "c"]
    assert tl["gap_ms_per_step_over_20us"] == round(25 / 1e3 / 2, 3)


def test_step_windows_time_each_step_from_its_host_start_to_its_last_kernel() -> None:
    """A step's window opens at its host call and takes the GPU work that starts before the next call."""
    from bench.step_profile import step_windows

    def k(ts, dur, name="k", cat="kernel"):
        return {"ph": "X", "cat": cat, "ts": ts, "dur": dur, "name": name}

    def step(ts):
        return {"ph": "X", "cat": "user_annotation", "ts": ts, "dur": 5, "name": "Optimizer.step#SCAO.step"}

    trace = {"traceEvents": [
        k(-50, 10),  # before the first step (a gradient copy): not counted
        step(0), k(10, 20), k(25, 10), k(60, 10, cat="gpu_memcpy"),  # wall 70, busy 25 + 10, first at 10
        step(100), k(130, 30),  # wall 60, busy 30, first kernel at 30
        step(300), k(302, 8),  # wall 10, busy 8, first kernel at 2
        {**step(301), "cat": "gpu_user_annotation"},  # the annotation's copy on the GPU timeline: not a step
    ]}  # fmt: skip
    sw = step_windows(trace, n=3)
    assert sw.pop("longest_gaps_us") == [[25, "k"]]  # step 1: from 35 to the copy at 60
    assert sw.pop("last_step_timeline_us") == [["gpu", 2, 8, "k"]]  # the last step's work, from its start
    assert sw.pop("kernels_in_step") == [["k", 1.7, 26.0]]  # by name: 5 of them, 78 us, over 3 steps
    assert sw == {"steps": 3, "wall_ms": 0.06, "busy_ms": 0.03, "host_lead_ms": 0.01}  # medians


def test_step_windows_take_the_gpu_work_the_step_launched() -> None:
    """With correlation ids, a step owns the GPU work of the runtime calls made inside it (graph replays
    included), not the copies the host launches after it returns."""
    from bench.step_profile import step_windows

    def call(ts, corr, name="cudaLaunchKernel", dur=1):
        return {"ph": "X", "cat": "cuda_runtime", "ts": ts, "dur": dur, "name": name, "args": {"correlation": corr}}

    def k(ts, dur, corr, name="k"):
        return {"ph": "X", "cat": "kernel", "ts": ts, "dur": dur, "name": name, "args": {"correlation": corr}}

    step = {"ph": "X", "cat": "user_annotation", "ts": 0, "dur": 50, "name": "Optimizer.step#SCAO.step"}
    trace = {"traceEvents": [
        step, call(5, 1), call(40, 2, "cudaGraphLaunch", dur=6),
        k(10, 20, 1), k(60, 10, 2, "g1"), k(75, 5, 2, "g2"),  # the step's: wall 80, busy 35, gaps 30 and 5
        call(70, 3), k(90, 100, 3, "grad copy"),  # launched after the step returned: not the step's
    ]}  # fmt: skip
    sw = step_windows(trace, n=1)
    # the timeline: the step's GPU work and its host calls of 5 us or more (the 1 us launch is left out)
    assert sw.pop("last_step_timeline_us") == [
        ["gpu", 10, 20, "k"], ["host", 40, 6, "cudaGraphLaunch"], ["gpu", 60, 10, "g1"], ["gpu", 75, 5, "g2"],
    ]  # fmt: skip
    assert sw.pop("kernels_in_step") == [["k", 1.0, 20.0], ["g1", 1.0, 10.0], ["g2", 1.0, 5.0]]  # not the copy
    assert sw == {"steps": 1, "wall_ms": 0.08, "busy_ms": 0.035, "host_lead_ms": 0.01,
                  "longest_gaps_us": [[30, "g1"], [5, "g2"]]}  # fmt: skip


def test_capture_check_smoke(tmp_path) -> None:
    """bench.capture_check on CPU (the device-input path without graphs for "graph"), with stream bases
    widened mid-run: runs, writes its JSON, and finds the three optimizers equal bit for bit."""
    from bench import capture_check

    out = tmp_path / "capture.json"
    args = ["--size", "tiny", "--steps", "5", "--batch", "2", "--grow-at", "3"]
    args += ["--scao-kwargs", '{"full_factor_dim": 64}']
    assert capture_check.main([*args, "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["bit_exact"] and res["state_mismatch_counts"] == {"inputs": 0, "graph": 0}
    assert res["graph_counts"]["eager"] > 0 and all(_finite(v) for v in res["step_ms_median"].values())
    assert res["inputs_counts"]["eager"] > 0  # the device-input path ran (not the eager step under its name)


def test_glue_trace_attributes_gpu_work_to_the_launching_line() -> None:
    """bench.glue_trace: each kernel goes to the scao_dist frames open on the host thread when its launch was
    made (matched by correlation id, innermost first, other threads' frames and other packages' left out); work
    launched outside the step's annotation is not counted."""
    from bench.glue_trace import STEP, attribute

    def frame(ts, dur, name, tid=1):
        return {"ph": "X", "cat": "python_function", "ts": ts, "dur": dur, "name": name, "pid": 0, "tid": tid}

    def call(ts, corr):
        return {"ph": "X", "cat": "cuda_runtime", "ts": ts, "dur": 1, "name": "cudaLaunchKernel", "pid": 0,
                "tid": 1, "args": {"correlation": corr}}  # fmt: skip

    def k(dur, corr, name):
        return {"ph": "X", "cat": "kernel", "ts": 500 + corr, "dur": dur, "name": name, "args": {"correlation": corr}}

    trace = {"traceEvents": [
        {"ph": "X", "cat": "user_annotation", "ts": 0, "dur": 100, "name": STEP},
        frame(1, 90, "/x/scao_dist/groups.py(639): update"),
        frame(5, 10, "/x/scao_dist/groups.py(537): tracked"),
        frame(6, 3, "/x/torch/_tensor.py(10): float"),
        frame(6, 50, "/x/scao_dist/other.py(1): on_another_thread", tid=2),
        call(7, 1), k(40, 1, "copy"),  # inside tracked (and torch's frame, not ours)
        call(20, 2), k(9, 2, "gemm"),  # inside update only
        call(150, 3), k(99, 3, "after"),  # after the step: not counted
    ]}  # fmt: skip
    rows = attribute(trace, depth=2, gpu=True)
    assert rows == [
        (40.0, "copy", ["scao_dist/groups.py(537): tracked", "scao_dist/groups.py(639): update"]),
        (9.0, "gemm", ["scao_dist/groups.py(639): update"]),
    ]


def test_sass_count_leaves_out_the_blocks_a_branch_skips() -> None:
    """bench.sass_count counts a kernel's main body up to its last EXIT, without the division's slow path (the
    block between a predicated BRA and the BSYNC it jumps to) and without the subroutines after the EXIT."""
    from bench.sass_count import fast_path

    sass = ["LDG.E R1, [R2]", "@!P0 EXIT", "FCHK P0, R1, R3", "@!P0 BRA `(.L_x_1)", "MOV R4, 0x10",
            "CALL.REL.NOINC `(slowpath)", "BSYNC B0", "STG.E [R2], R1", "EXIT", "BRA `(.L_x_2)",
            "MUFU.RCP R0, R1", "RET.REL.NODEC R4"]  # fmt: skip
    assert fast_path(sass) == ["LDG.E R1, [R2]", "@!P0 EXIT", "FCHK P0, R1, R3", "@!P0 BRA `(.L_x_1)", "BSYNC B0",
                               "STG.E [R2], R1", "EXIT"]  # fmt: skip


def test_step_profile_times_the_anchors_or_says_why_not(tmp_path) -> None:
    """bench.step_profile's AdamW case times finite steps; its FlashAdamW case either does too or, without
    flashoptim, records that it was skipped and why (the run goes on)."""
    from bench import step_profile

    out = tmp_path / "prof.json"
    args = ["--size", "tiny", "--steps", "2", "--profile-steps", "1", "--cases", "flash,adamw", "--out", str(out)]
    assert step_profile.main(args) == 0
    cases = json.loads(out.read_text())["cases"]
    assert all(_finite(v) for v in cases["adamw"]["step_ms"].values())
    if importlib.util.find_spec("flashoptim") is None:
        assert cases["flash"] == {"skipped": "flashoptim is not installed (No module named 'flashoptim')"}
    else:
        assert all(_finite(v) for v in cases["flash"]["step_ms"].values())


def test_sweep_settings_are_set_as_kernel_constants_and_put_back() -> None:
    """bench.kernels' sweep sets ``MODULE.NAME`` constants through bench.knobs (a ``tl.constexpr`` keeps its type)
    and the launch options for one call, then restores all of them; an unknown constant is refused by name."""
    import triton.language as tl

    from bench.kernels import with_config
    from scao_dist.kernels import adamw, common

    bg, cvt, launch = adamw.BG, common.HW_CVT.value, dict(common.LAUNCH)
    cfg = {"adamw.BG": bg + 1, "common.HW_CVT": not cvt, "num_warps": 2}
    got = with_config(cfg, lambda: (adamw.BG, common.HW_CVT, common.LAUNCH["num_warps"]))
    assert got[0] == bg + 1 and isinstance(got[1], tl.constexpr) and got[1].value == (not cvt) and got[2] == 2
    assert (adamw.BG, common.HW_CVT.value, common.LAUNCH) == (bg, cvt, launch)
    with pytest.raises(SystemExit, match="adamw has no constant 'NOPE'"):
        with_config({"adamw.NOPE": 1}, lambda: 0)
