"""Weak-scaling run of scao_dist's sharded runtime, side by side with DeepSpeed ZeRO-1 AdamW (issues 4 and 8).

    python -m bench.scaling --out runs/scaling                        # every N in {1, 2, 4} <= GPUs, both optimizers
    python -m bench.scaling --nproc 1,2 --optimizers scao --steps 30 --out DIR
    python -m bench.scaling --device cpu --size tiny --nproc 1,2 --out /tmp/s    # CPU smoke (gloo)
    python -m bench.scaling --report DIR                               # re-render DIR/scaling.md from its JSONs

What runs. Per configuration (optimizer x N) this launcher starts N fresh worker processes itself (one per
GPU, ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_*`` in their environment, each in its own process group,
killed on a timeout, on a failed rank, or when the launcher is stopped), NCCL on CUDA and gloo on CPU. Every
rank trains the same byte-level GPT (:mod:`scao_dist.demo`, ``GPTConfig.large()``: 405M parameters; batch 8x512
per GPU) from the same init on its own data (:class:`~scao_dist.demo.ByteCorpus` seeded by rank): weak scaling,
the global batch is 8xN sequences. bf16 autocast and bf16 weights for both optimizers; TF32 for fp32 matmuls.

* ``scao``: :class:`scao_dist.SCAO` defaults (lr 1e-3, weight decay 0.01) on the plain model (no DDP):
  ``grad_sync="scao"``, so SCAO averages the gradients itself (bucketed reduce-scatter to each block's
  owner) and all-gathers the weights its owners updated.
* ``deepspeed``: ``deepspeed.initialize`` with ZeRO stage 1, ``bf16.enabled`` and
  ``"optimizer": {"type": "AdamW", "params": {"torch_adam": true, "fused": <on CUDA>}}``: DeepSpeed then
  builds ``torch.optim.AdamW`` (``DeepSpeedEngine.get_optimizer_configuration``) instead of its FusedAdam
  CUDA extension, and the ZeRO-1 path (``DeepSpeedZeroOptimizer``, bf16 params and gradients, fp32 master
  partition) needs no other op: nothing is JIT-compiled on CUDA. Every ``OpBuilder.load`` that does happen is
  logged and recorded (``ds_ops_loaded``). On CPU only, DeepSpeed's shared-memory all-reduce op (a C++ JIT
  build, inference-only speedup) is switched off: gloo does the collectives.

What is measured, after ``--warmup`` steps, over ``--steps`` timed steps (fewer if ``--time-budget-s`` would be
exceeded: the ranks agree on the count once, after the warm-up), each step fenced by waiting for its last CUDA
event on the main stream (``--fence device``: ``torch.cuda.synchronize`` instead, which also waits for SCAO's
refresh side stream), the timed loop bracketed by ``torch.cuda.synchronize``: per-GPU step time from CUDA events
(forward + backward + optimizer step), median and p99 (the slowest rank's; with 30 steps p99 is the slowest step);
ms inside the optimizer's step (for DeepSpeed ZeRO-1 that excludes the gradient all-reduce, which runs in
``engine.backward``); tokens/s per GPU (tokens of one rank's timed steps / their wall time, to the closing
synchronize); peak GPU memory (``max_memory_allocated``, whole process); optimizer bytes/param per rank (this
rank's optimizer bytes / all trained parameters: SCAO ``memory_report``; DeepSpeed: AdamW's ``state`` tensors on
this rank's partition plus the fp32 master partition, walked on each rank); communication bytes sent per step per
rank (SCAO: ``opt.comm.bytes_sent`` after each step; DeepSpeed: computed, not measured, from its flat parameter
count and the algorithm its config runs, see :func:`ds_comm_bytes`); weak-scaling efficiency = tokens/s per GPU at
N / at N=1 (same optimizer).

Output in ``--out``: one ``<optimizer>_n<N>.json`` per configuration (per-rank numbers under ``ranks``),
``scaling.md`` (the table, also printed last), ``logs/<config>/rank<r>.log``.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import math
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
import traceback
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

# NVLink multicast (NVLS) can take a host's GPUs down: off in this process and so in every process it starts.
NVLS_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
os.environ.update(NVLS_ENV)

ROOT = Path(__file__).resolve().parents[1]
OPTIMIZERS = ("scao", "deepspeed")
SIZES = {"tiny": 4, "small": 16, "large": 8}  # GPTConfig factory -> default per-GPU batch
DEFAULT_LR = {"scao": 1e-3, "deepspeed": 5e-4}  # their best lrs on the 43M model (BENCHMARKS.md); timing only
CANDIDATE_N = (1, 2, 4)
TABLE = "scaling.md"


# ================================================================================================ arguments
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="output folder (JSON per configuration, scaling.md, logs/)")
    p.add_argument(
        "--nproc",
        default="auto",
        help="N's to run, comma-separated, or 'auto': every N in {1, 2, 4} <= visible GPUs (CPU: 1,2)",
    )
    p.add_argument("--optimizers", default="scao,deepspeed", help=f"comma-separated, from {', '.join(OPTIMIZERS)}")
    p.add_argument("--size", choices=sorted(SIZES), default="large", help="GPTConfig size (default: 405M)")
    p.add_argument("--batch-size", type=int, default=None, help="sequences per GPU (default: 8 large, 4 tiny)")
    p.add_argument("--seq-len", type=int, default=None, help="default: the size's (512; tiny 128)")
    p.add_argument("--steps", type=int, default=30, help="timed steps per configuration")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps first (first bases, autotuning, NCCL)")
    p.add_argument(
        "--time-budget-s",
        type=float,
        default=540.0,
        help="whole invocation; configurations that cannot start in what is left are skipped",
    )
    p.add_argument("--config-timeout-s", type=float, default=300.0, help="hard cap per configuration")
    p.add_argument(
        "--min-config-s",
        type=float,
        default=None,
        help="do not start a configuration with less than this left (default: 75 on CUDA, 15 on CPU)",
    )
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-bytes", type=int, default=16_000_000, help="corpus bytes read from the stdlib")
    p.add_argument("--lr-scao", type=float, default=DEFAULT_LR["scao"])
    p.add_argument("--lr-adamw", type=float, default=DEFAULT_LR["deepspeed"])
    p.add_argument("--scao-kwargs", default="{}", help="JSON: extra scao_dist.SCAO keyword arguments")
    p.add_argument(
        "--ds-zero",
        default="{}",
        help="JSON merged into DeepSpeed's zero_optimization, e.g. '{\"use_multi_rank_bucket_allreduce\": false}'",
    )
    p.add_argument("--pg-timeout-s", type=float, default=180.0, help="process-group timeout (a hung collective fails)")
    p.add_argument(
        "--fence",
        choices=("stream", "device"),
        default="stream",
        help="end each timed step by waiting for the main CUDA stream (default: side streams, such as "
        "SCAO's refresh worker, keep running into the next step) or for the whole device",
    )
    p.add_argument("--report", metavar="DIR", help="only re-render DIR/scaling.md from the JSONs in DIR")
    p.add_argument("--worker", metavar="SPEC", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not (args.worker or args.report or args.out):
        p.error("--out is required")
    return args


# ================================================================================================= launcher
_LIVE: list[subprocess.Popen] = []


def _kill(procs: list[subprocess.Popen], grace_s: float = 5.0) -> None:
    """SIGTERM each worker's process group (each worker leads its own), then SIGKILL what is left."""
    alive = [p for p in procs if p.poll() is None]
    for p in alive:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGTERM)
    end = time.monotonic() + grace_s
    while any(p.poll() is None for p in alive) and time.monotonic() < end:
        time.sleep(0.1)
    for p in alive:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=5)


def _kill_live() -> None:
    _kill(_LIVE)
    _LIVE.clear()


def _on_signal(signum: int, _frame: Any) -> None:
    print(f"bench.scaling: signal {signum}: stopping the workers", flush=True)
    _kill_live()
    raise SystemExit(128 + signum)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _git_commit() -> str | None:
    try:
        r = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return (r.stdout.strip() + ("+dirty" if dirty else "")) if r.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _pkg_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _env_info(device: str) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "deepspeed": _pkg_version("deepspeed"),
        "scao_dist_commit": _git_commit(),
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "device": device,
        "nvls_env": {k: os.environ.get(k) for k in NVLS_ENV},
    }
    if device == "cuda":
        info["cuda"] = torch.version.cuda
        with contextlib.suppress(Exception):
            info["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
        try:  # nvidia-smi rather than torch: no CUDA context (and its memory) in the launcher
            q = ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"]
            info["gpus"] = subprocess.run(q, capture_output=True, text=True, timeout=30).stdout.strip().splitlines()
        except (OSError, subprocess.SubprocessError):
            info["gpus"] = []
    else:
        info["cpus"] = os.cpu_count()
    return info


def _resolve_device(choice: str) -> str:
    import torch

    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible")
    return choice


def _resolve_nproc(spec: str, device: str) -> tuple[list[int], int]:
    import torch

    avail = torch.cuda.device_count() if device == "cuda" else 0
    if spec.strip().lower() == "auto":
        ns = [n for n in CANDIDATE_N if n <= avail] if device == "cuda" else [1, 2]
    else:
        ns = sorted({int(x) for x in spec.split(",") if x.strip()})
    if not ns or min(ns) < 1:
        raise SystemExit(f"--nproc {spec!r}: no valid N (visible GPUs: {avail})")
    return ns, avail


def _config_name(opt: str, n: int) -> str:
    return f"{opt}_n{n}"


def run_config(args: argparse.Namespace, opt: str, n: int, device: str, deadline: float, env_info: dict) -> dict:
    """Start N workers for one configuration, wait (bounded), aggregate their per-rank JSON."""
    name = _config_name(opt, n)
    out = Path(args.out)
    logdir = out / "logs" / name
    logdir.mkdir(parents=True, exist_ok=True)
    for f in logdir.glob("*"):
        f.unlink()
    timeout = max(5.0, min(args.config_timeout_s, deadline - time.time()))
    spec = {
        "optimizer": opt,
        "world_size": n,
        "device": device,
        "size": args.size,
        "batch_size": args.batch_size or SIZES[args.size],
        "seq_len": args.seq_len,
        "steps": args.steps,
        "warmup": args.warmup,
        "seed": args.seed,
        "max_bytes": args.max_bytes,
        "lr": args.lr_scao if opt == "scao" else args.lr_adamw,
        "scao_kwargs": json.loads(args.scao_kwargs),
        "ds_zero": json.loads(args.ds_zero),
        "pg_timeout_s": args.pg_timeout_s,
        "fence": args.fence,
        "start_unix": time.time(),
        "timeout_s": timeout,
        "logdir": str(logdir),
    }
    (logdir / "spec.json").write_text(json.dumps(spec, indent=1))
    port = _free_port()
    threads = max(1, (os.cpu_count() or 2) // max(n, 1)) if device == "cuda" else 1
    procs: list[subprocess.Popen] = []
    t0 = time.time()
    print(f"--- {name}: {n} rank(s) on {device}, timeout {timeout:.0f} s (logs: {logdir})", flush=True)
    try:
        for r in range(n):
            env = dict(os.environ)
            env.update(NVLS_ENV)
            env.update(
                RANK=str(r),
                WORLD_SIZE=str(n),
                LOCAL_RANK=str(r),
                LOCAL_WORLD_SIZE=str(n),
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=str(port),
                OMP_NUM_THREADS=str(threads),
                PYTHONUNBUFFERED="1",
                DS_ACCELERATOR=device,
                PYTHONPATH=os.pathsep.join(x for x in (str(ROOT), os.environ.get("PYTHONPATH")) if x),
            )
            with open(logdir / f"rank{r}.log", "w") as log:
                p = subprocess.Popen(
                    [sys.executable, "-m", "bench.scaling", "--worker", str(logdir / "spec.json")],
                    cwd=ROOT,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            procs.append(p)
            _LIVE.append(p)
        status, message, first_fail = "ok", "", None
        while True:
            codes = [p.poll() for p in procs]
            if all(c is not None for c in codes):
                break
            now = time.time()
            bad = [r for r, c in enumerate(codes) if c not in (None, 0)]
            if bad and first_fail is None:
                first_fail = now
            if first_fail is not None and now - first_fail > 15:  # a rank died: the others fail or hang
                status, message = "failed", f"rank(s) {bad} exited non-zero; killed the others after 15 s"
                break
            if now - t0 > timeout:
                status, message = "timeout", f"still running after {timeout:.0f} s: killed"
                break
            time.sleep(0.25)
    finally:
        _kill(procs)
        for p in procs:
            if p in _LIVE:
                _LIVE.remove(p)
    codes = [p.returncode for p in procs]
    if status == "ok" and any(c != 0 for c in codes):
        status, message = "failed", f"exit codes {codes}"
    ranks = []
    for r in range(n):
        f = logdir / f"rank{r}.json"
        ranks.append(json.loads(f.read_text()) if f.exists() else {"rank": r, "status": "no_result"})
    errors = sorted({f"rank {x.get('rank')}: {x['error'].splitlines()[0]}" for x in ranks if x.get("error")})
    if status == "ok" and any(x.get("status") != "ok" for x in ranks):
        status, message = "failed", "a rank wrote no result"
    if errors:
        status = "failed" if status == "ok" else status
        message = "; ".join([m for m in (message,) if m] + errors[:4])
    rec = aggregate(spec, ranks)
    rec.update(
        name=name,
        status=status,
        message=message,
        exit_codes=codes,
        wall_s=round(time.time() - t0, 1),
        env=env_info,
        command=" ".join(sys.argv),
    )
    if status != "ok":
        # the log of the first rank that failed by itself (killed ones show negative codes), else rank 0's
        worst = next((r for r, c in enumerate(codes) if c is not None and c > 0), 0)
        tail = _log_tail(logdir / f"rank{worst}.log", 25)
        rec["log_tail"] = tail
        print(f"!!! {name}: {status}: {message}\n{tail}", flush=True)
    (out / f"{name}.json").write_text(json.dumps(rec, indent=1))
    print(f"--- {name}: {status} in {rec['wall_s']} s  {summary_line(rec)}", flush=True)
    return rec


def _log_tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _max(values: list[Any]) -> float | None:
    vals = [v for v in values if isinstance(v, int | float) and math.isfinite(v)]
    return max(vals) if vals else None


def _min(values: list[Any]) -> float | None:
    vals = [v for v in values if isinstance(v, int | float) and math.isfinite(v)]
    return min(vals) if vals else None


def aggregate(spec: dict, ranks: list[dict]) -> dict:
    """One configuration's numbers: the slowest rank's times, the most loaded rank's bytes."""

    def col(key: str) -> list[Any]:
        return [r.get(key) for r in ranks]

    r0 = ranks[0] if ranks else {}
    return {
        "optimizer": spec["optimizer"],
        "world_size": spec["world_size"],
        "device": spec["device"],
        "spec": spec,
        "model": r0.get("model"),
        "tokens_per_step_per_gpu": r0.get("tokens_per_step"),
        "timed_steps": r0.get("timed_steps"),
        "step_ms_median": _max(col("step_ms_median")),
        "step_ms_p99": _max(col("step_ms_p99")),
        "opt_ms_median": _max(col("opt_ms_median")),
        "tokens_per_s_per_gpu": _min(col("tokens_per_s")),
        "peak_gib": _max(col("peak_gib")),
        "opt_bytes_per_param_rank": _max(col("opt_bytes_per_param")),
        "opt_bytes_rank_max": _max(col("opt_bytes")),
        "opt_bytes_all_ranks": sum(v for v in col("opt_bytes") if isinstance(v, int | float)) or None,
        "comm_bytes_per_step_rank": _max(col("comm_bytes_per_step")),
        "comm_source": r0.get("comm_source"),
        "opt_bytes_source": r0.get("opt_bytes_source"),
        "loss_first": r0.get("loss_first"),
        "loss_last": r0.get("loss_last"),
        "weights_in_sync": r0.get("weights_in_sync"),
        "ranks": ranks,
    }


# =================================================================================================== report
def _f(v: Any, fmt: str) -> str:
    return format(v, fmt) if isinstance(v, int | float) and math.isfinite(v) else "—"


def summary_line(rec: dict) -> str:
    return (
        f"ms/step {_f(rec.get('step_ms_median'), '.1f')} (p99 {_f(rec.get('step_ms_p99'), '.1f')}), "
        f"tok/s/GPU {_f(rec.get('tokens_per_s_per_gpu'), ',.0f')}, peak {_f(rec.get('peak_gib'), '.2f')} GiB, "
        f"opt {_f(rec.get('opt_bytes_per_param_rank'), '.3f')} B/param/rank, "
        f"comm {_mib(rec.get('comm_bytes_per_step_rank'))} MiB/step/rank"
    )


def _mib(v: Any) -> str:
    return _f(v / 2**20 if isinstance(v, int | float) else None, ".1f")


def load_records(folder: Path) -> list[dict]:
    recs = []
    for f in sorted(folder.glob("*_n*.json")):
        with contextlib.suppress(OSError, json.JSONDecodeError):
            rec = json.loads(f.read_text())
            if isinstance(rec, dict) and "optimizer" in rec and "world_size" in rec:
                recs.append(rec)
    return recs


def render(recs: list[dict]) -> str:
    """The Markdown table (efficiency and memory share are relative to the same optimizer's N=1 row)."""
    order = {o: i for i, o in enumerate(OPTIMIZERS)}
    recs = sorted(recs, key=lambda r: (order.get(r["optimizer"], 99), r["world_size"]))
    base = {r["optimizer"]: r for r in recs if r["world_size"] == 1 and r.get("status") == "ok"}
    label = {"scao": "scao_dist SCAO", "deepspeed": "DeepSpeed ZeRO-1 AdamW"}
    lines = [
        "| optimizer | N | status | ms/step median | p99 | p99/median | ms in step() | tokens/s/GPU | "
        "weak-scaling eff. | peak GiB | opt B/param/rank | rank share of N=1 | comm MiB/step/rank |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in recs:
        b = base.get(r["optimizer"])
        eff = share = None
        tps, med, p99 = r.get("tokens_per_s_per_gpu"), r.get("step_ms_median"), r.get("step_ms_p99")
        if b and r.get("status") == "ok" and tps and b.get("tokens_per_s_per_gpu"):
            eff = tps / b["tokens_per_s_per_gpu"]
        obp = r.get("opt_bytes_per_param_rank")
        if b and obp and b.get("opt_bytes_per_param_rank"):
            share = obp / b["opt_bytes_per_param_rank"]
        lines.append(
            f"| {label.get(r['optimizer'], r['optimizer'])} | {r['world_size']} | {r.get('status', '?')} | "
            f"{_f(med, '.1f')} | {_f(p99, '.1f')} | {_f(p99 / med if med and p99 else None, '.2f')} | "
            f"{_f(r.get('opt_ms_median'), '.1f')} | {_f(tps, ',.0f')} | {_f(eff * 100 if eff else None, '.1f')}"
            f"{'%' if eff else ''} | {_f(r.get('peak_gib'), '.2f')} | {_f(obp, '.3f')} | "
            f"{_f(share, '.3f')} | {_mib(r.get('comm_bytes_per_step_rank'))} |"
        )
    notes = [
        f"**{r.get('name')}: {r.get('status')}** — {r.get('message', '')}" for r in recs if r.get("status") != "ok"
    ]
    any_rec = next((r for r in recs if r.get("status") == "ok"), recs[0] if recs else {})
    env = any_rec.get("env") or {}
    spec = any_rec.get("spec") or {}
    model = any_rec.get("model") or {}
    if env:
        where = ", ".join(env.get("gpus") or []) or f"CPU ({env.get('cpus')} cores)"
        notes.append(
            f"Machine: {where}; torch {env.get('torch')} (CUDA {env.get('cuda', '—')}, NCCL "
            f"{env.get('nccl', '—')}), DeepSpeed {env.get('deepspeed')}, Python {env.get('python')}, "
            f"scao_dist {env.get('scao_dist_commit')}; {env.get('date_utc')} UTC."
        )
    if model:
        notes.append(
            f"Model: GPT {spec.get('size')} ({model.get('params', 0) / 1e6:.1f}M params, d={model.get('d_model')}, "
            f"{model.get('n_layer')} layers), batch {spec.get('batch_size')}x{model.get('seq_len')} per GPU "
            f"(global = that x N, each rank its own data), bf16 weights + bf16 autocast; "
            f"{any_rec.get('timed_steps')} timed steps after {spec.get('warmup')} warm-up."
        )
    notes += [
        "Step time: CUDA events around forward+backward+optimizer step (CPU: perf_counter), each step fenced "
        f"on the {'whole device' if spec.get('fence') == 'device' else 'main stream (side streams run on)'}; "
        "median and p99 of the slowest rank. ms in step(): `opt.step()` / `engine.step()` (DeepSpeed reduces "
        "gradients inside `engine.backward`, so its gradient traffic is outside this column). tokens/s/GPU: one "
        "rank's tokens over the timed steps' wall time (the slowest rank). Weak-scaling efficiency: tokens/s/GPU "
        "at N over the same optimizer's at N=1.",
        "opt B/param/rank: the most loaded rank's optimizer bytes over all trained parameters (SCAO: "
        "`memory_report`, with bf16 weights' int8 correction bits; DeepSpeed: AdamW's two fp32 moments on the "
        "rank's partition + its fp32 master partition). rank share of N=1: that over the N=1 row (ideal 1/N).",
        "comm: bytes one rank sends per step. SCAO: measured (`opt.comm.bytes_sent`: bucketed reduce-scatter of "
        "bf16 grads + all-gather of bf16 weights). DeepSpeed: computed from its flat (padded) parameter count, "
        "not measured: with its default `use_multi_rank_bucket_allreduce=true` ZeRO-1 all-reduces the bf16 "
        "gradient buckets (ring: 2(N-1)/N x 2P bytes) and all-gathers the bf16 weights ((N-1)/N x 2P); "
        "textbook ZeRO-1 (reduce-scatter + all-gather) is 2(N-1)/N x 2P, in the JSON as `zero1_reference_bytes`.",
    ]
    return "\n".join(lines) + "\n\n" + "\n".join(f"* {n}" for n in notes) + "\n"


def write_report(folder: Path) -> str:
    text = "# Weak scaling: scao_dist SCAO vs DeepSpeed ZeRO-1 AdamW\n\n" + render(load_records(folder))
    (folder / TABLE).write_text(text)
    return text


# =================================================================================================== launch
def launch(args: argparse.Namespace) -> int:
    t_start = time.time()
    deadline = t_start + args.time_budget_s
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    atexit.register(_kill_live)
    device = _resolve_device(args.device)
    ns, avail = _resolve_nproc(args.nproc, device)
    opts = [o.strip() for o in args.optimizers.split(",") if o.strip()]
    unknown = [o for o in opts if o not in OPTIMIZERS]
    if unknown:
        raise SystemExit(f"unknown optimizer(s) {unknown}; known: {', '.join(OPTIMIZERS)}")
    min_start = args.min_config_s if args.min_config_s is not None else (75.0 if device == "cuda" else 15.0)
    env_info = _env_info(device)
    plan = [(o, n) for n in ns for o in opts]  # smallest N first: a budget cut loses the largest
    print(
        f"bench.scaling: device {device} ({avail} GPU(s) visible), plan "
        f"{', '.join(_config_name(o, n) for o, n in plan)}; budget {args.time_budget_s:.0f} s, "
        f"{args.warmup} warm-up + {args.steps} timed steps each",
        flush=True,
    )
    for o, n in plan:
        left = deadline - time.time()
        if device == "cuda" and n > avail:
            status, msg = "skipped_gpus", f"needs {n} GPUs, {avail} visible"
        elif left < min_start:
            status, msg = "skipped_budget", f"{left:.0f} s left of the budget (< {min_start:.0f} s)"
        else:
            run_config(args, o, n, device, deadline, env_info)
            continue
        rec = {
            "optimizer": o,
            "world_size": n,
            "device": device,
            "status": status,
            "message": msg,
            "env": env_info,
            "name": _config_name(o, n),
        }
        (out / f"{_config_name(o, n)}.json").write_text(json.dumps(rec, indent=1))
        print(f"--- {_config_name(o, n)}: {status}: {msg}", flush=True)
    text = write_report(out)
    print(f"\nbench.scaling: done in {time.time() - t_start:.0f} s; files in {out}\n", flush=True)
    print(text, flush=True)
    recs = [r for r in load_records(out) if (r["optimizer"], r["world_size"]) in set(plan)]
    return 0 if recs and all(r.get("status") == "ok" for r in recs) else 1


# =================================================================================================== worker
def _stats(xs: list[float]) -> tuple[float | None, float | None]:
    if not xs:
        return None, None
    s = sorted(xs)
    p99 = s[min(len(s) - 1, math.ceil(0.99 * len(s)) - 1)]
    return statistics.median(s), p99


def ds_state_bytes(zopt: Any) -> dict[str, int]:
    """What DeepSpeed's ZeRO-1 optimizer holds for this rank: AdamW's state + the fp32 master partition."""
    seen: set[int] = set()

    def nbytes(t: Any) -> int:
        import torch

        if not isinstance(t, torch.Tensor) or t.device.type == "meta":
            return 0
        key = t.untyped_storage().data_ptr()
        if key in seen:
            return 0
        seen.add(key)
        return t.untyped_storage().nbytes()

    inner = getattr(zopt, "optimizer", zopt)
    moments = sum(nbytes(v) for st in inner.state.values() for v in st.values())
    master = sum(nbytes(t) for t in getattr(zopt, "single_partition_of_fp32_groups", []) or [])
    return {"moments": moments, "fp32_master": master, "total": moments + master}


def ds_comm_bytes(zopt: Any, world: int) -> dict[str, Any]:
    """Bytes one rank sends per step under DeepSpeed 0.19.8's ZeRO-1 (computed from the flat sizes).

    Gradients: ``average_tensor`` reduces each bucket with one all-reduce when
    ``use_multi_rank_bucket_allreduce`` (the default) — a ring all-reduce sends ``2 (N-1)/N`` of the
    bucket — and with one ``reduce`` per owning rank otherwise (``(N-1)/N``, as a reduce-scatter).
    Weights: ``all_gather_dp_groups`` all-gathers every rank's updated bf16 partition (``(N-1)/N``).
    """
    import torch

    flat = sum(t.numel() for t in getattr(zopt, "bit16_groups_flat", []) or [])
    grad_dtype = getattr(zopt, "communication_data_type", None) or torch.bfloat16
    gsz = torch.empty((), dtype=grad_dtype).element_size()
    psz = (zopt.bit16_groups_flat[0].element_size()) if flat else 2
    allreduce = bool(getattr(zopt, "use_multi_rank_bucket_allreduce", True))
    frac = (world - 1) / world
    grads = (2 * frac if allreduce else frac) * flat * gsz
    params = frac * flat * psz
    return {
        "total": round(grads + params),
        "grads": round(grads),
        "params": round(params),
        "flat_numel": flat,
        "grad_collective": "all-reduce" if allreduce else "reduce per owner",
        "zero1_reference_bytes": round(frac * flat * (gsz + psz)),
        "settings": {
            k: getattr(zopt, k, None)
            for k in (
                "overlap_comm",
                "reduce_scatter",
                "contiguous_gradients",
                "use_multi_rank_bucket_allreduce",
                "reduce_bucket_size",
                "allgather_bucket_size",
            )
        },
    }


def _ds_config(spec: dict, cuda: bool) -> dict:
    zero = {"stage": 1, **spec.get("ds_zero", {})}
    params = {"lr": spec["lr"], "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.01, "torch_adam": True}
    if cuda:
        params["fused"] = True  # torch's fused AdamW on the flat fp32 partition (no DeepSpeed extension)
    return {
        "train_micro_batch_size_per_gpu": spec["batch_size"],
        "gradient_accumulation_steps": 1,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        "optimizer": {"type": "AdamW", "params": params},
        "zero_optimization": zero,
        "bf16": {"enabled": True},
    }


def _patch_deepspeed(rec: dict, cpu: bool) -> None:
    """Record every op DeepSpeed builds or loads (a JIT build would show here, with its seconds)."""
    from deepspeed.ops.op_builder import builder

    loaded = rec.setdefault("ds_ops_loaded", [])
    orig = builder.OpBuilder.load

    def load(self: Any, *a: Any, **kw: Any) -> Any:
        t0 = time.time()
        print(f"[bench.scaling] DeepSpeed loads op {self.name} (a JIT build if not prebuilt)", flush=True)
        try:
            return orig(self, *a, **kw)
        finally:
            loaded.append({"op": self.name, "seconds": round(time.time() - t0, 1)})

    builder.OpBuilder.load = load
    if cpu:  # shared-memory all-reduce: a C++ JIT build that only speeds up CPU inference; gloo is enough here
        import importlib

        # by module name: ``import deepspeed.comm.torch as m`` would find the package's ``torch`` attribute
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None


def worker(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    logdir = Path(spec["logdir"])
    deadline = spec["start_unix"] + spec["timeout_s"]
    import faulthandler

    # a hang dumps every thread's stack into the log and exits, a few seconds before the launcher's kill
    faulthandler.dump_traceback_later(max(5.0, deadline - time.time() - 5.0), exit=True)
    rec: dict[str, Any] = {"rank": rank, "world_size": world, "optimizer": spec["optimizer"], "status": "started"}
    opt = None
    try:
        _worker_body(spec, rank, world, local_rank, deadline, rec)
        rec["status"] = "ok"
    except BaseException as e:  # everything reaches the JSON and the log
        rec["status"] = "error"
        rec["error"] = f"{type(e).__name__}: {e}\n{traceback.format_exc()}"
        print(rec["error"], flush=True)
    finally:
        opt = rec.pop("_opt", None)
        (logdir / f"rank{rank}.json").write_text(json.dumps(rec, indent=1))
    with contextlib.suppress(Exception):
        refresher = getattr(opt, "refresher", None)
        if refresher is not None:
            refresher.close()
    faulthandler.cancel_dump_traceback_later()
    import torch.distributed as dist

    if rec["status"] == "ok" and dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0 if rec["status"] == "ok" else 1)


class TritonVariants:
    """Each time a Triton kernel needs a variant this process has not built (a compile, or a load
    from Triton's on-disk cache): the step it happened in, the kernel, the milliseconds it took and
    Triton's description of the variant (signature and constants, to tell what changed).
    A variant is keyed by the kernel's constexprs and argument specialisations (dtypes, an integer
    equal to 1, divisibility by 16), so a shape first seen mid-run can cost a compile mid-run."""

    def __init__(self) -> None:
        self.step = -1
        self.events: list[list[Any]] = []
        self._open: list[tuple[list[Any], float]] = []  # (event, start) of the builds not finished yet
        try:
            from triton import knobs
        except ImportError:  # a Triton without knobs: nothing recorded
            self.ok = False
            return
        self.ok = True
        knobs.runtime.jit_cache_hook = self._start
        knobs.runtime.jit_post_compile_hook = self._end

    def close(self) -> None:
        """Take the hooks out again."""
        if self.ok:
            from triton import knobs

            knobs.runtime.jit_cache_hook = knobs.runtime.jit_post_compile_hook = None

    def _start(self, *args: Any, **kw: Any) -> None:
        fn = kw.get("fn")
        name = getattr(fn, "name", None) or str(kw.get("repr", "?")).split("[")[0]
        event = [self.step, name, None, str(kw.get("repr", ""))[:400]]  # repr: the variant's signature and constants
        self.events.append(event)
        self._open.append((event, time.perf_counter()))
        return None  # a true value would make Triton skip the compile

    def _end(self, *args: Any, **kw: Any) -> None:
        if self._open:  # builds finish in the order they started
            event, t0 = self._open.pop(0)
            event[2] = round((time.perf_counter() - t0) * 1e3, 1)
        return None


def _worker_body(spec: dict, rank: int, world: int, local_rank: int, deadline: float, rec: dict) -> None:
    import torch
    import torch.distributed as dist

    from scao_dist.demo import GPT, ByteCorpus, GPTConfig, stdlib_corpus

    cuda = spec["device"] == "cuda"
    if cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        device = torch.device("cpu")
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    t0 = time.time()
    pg_kw: dict[str, Any] = {"timeout": timedelta(seconds=spec["pg_timeout_s"])}
    if cuda:
        pg_kw["device_id"] = device
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world, **pg_kw)
    rec["init_pg_s"] = round(time.time() - t0, 2)

    cfg = getattr(GPTConfig, spec["size"])()
    if spec.get("seq_len"):
        cfg.seq_len = int(spec["seq_len"])
    torch.manual_seed(spec["seed"])
    with device:
        model = GPT(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    rec["model"] = {"params": n_params, "d_model": cfg.d_model, "n_layer": cfg.n_layer, "seq_len": cfg.seq_len}
    train, _ = stdlib_corpus(max_bytes=spec["max_bytes"])
    data = ByteCorpus(train, cfg.seq_len, spec["batch_size"], seed=spec["seed"] * 7919 + rank)  # per-rank data
    n_max = spec["warmup"] + spec["steps"]
    batches = [data.batch(k, device) for k in range(n_max)]
    tokens_per_step = spec["batch_size"] * cfg.seq_len
    rec["tokens_per_step"] = tokens_per_step

    t1 = time.time()
    if spec["optimizer"] == "scao":
        from scao_dist import SCAO, memory_report

        model = model.to(torch.bfloat16)
        if world > 1:  # a plain model (no DDP): every rank starts from rank 0's weights
            with torch.no_grad():
                for p in model.parameters():
                    dist.broadcast(p.data, 0)
        opt = SCAO(model.parameters(), lr=spec["lr"], weight_decay=0.01, grad_sync="scao", **spec["scao_kwargs"])
        rec["_opt"] = opt
        module = model

        def fwd_bwd(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = model(x, y)
            loss.backward()
            return loss

        def opt_step() -> None:
            opt.step()
            opt.zero_grad(set_to_none=True)

        def comm_bytes() -> int:
            return int(opt.comm.bytes_sent)

        rec["comm_source"] = "measured: opt.comm.bytes_sent"
        rec["opt_bytes_source"] = "scao_dist.memory_report"
    else:
        import deepspeed

        _patch_deepspeed(rec, cpu=not cuda)
        engine, zopt, _, _ = deepspeed.initialize(
            model=model, model_parameters=model.parameters(), config=_ds_config(spec, cuda)
        )
        rec["ds_optimizer"] = f"{type(zopt).__name__} over {type(getattr(zopt, 'optimizer', zopt)).__name__}"
        rec["ds_config"] = _ds_config(spec, cuda)
        module = engine.module
        print(
            f"[bench.scaling] DeepSpeed {deepspeed.__version__}: {rec['ds_optimizer']}, "
            f"params {next(module.parameters()).dtype}",
            flush=True,
        )

        def fwd_bwd(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = engine(x, y)
            engine.backward(loss)
            return loss

        def opt_step() -> None:
            engine.step()

        ds_comm = ds_comm_bytes(zopt, world)
        rec["ds_comm"] = ds_comm

        def comm_bytes() -> int:
            return ds_comm["total"]

        rec["comm_source"] = f"computed: DeepSpeed ZeRO-1 ({ds_comm['grad_collective']} of grads + all-gather)"
        rec["opt_bytes_source"] = "walk: AdamW state + fp32 master partition"
    rec["setup_s"] = round(time.time() - t1, 2)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    ev = [torch.cuda.Event(enable_timing=True) for _ in range(3)] if cuda else None
    device_fence = spec.get("fence") == "device"

    def fence() -> None:
        """End of a step: wait for the main stream (default), or for every stream (``--fence device``).

        The main-stream fence leaves SCAO's refresh worker (a side stream) running into the next step's
        forward/backward, as in training; a device-wide synchronize would charge each refresh to the step
        in which the worker happened to enqueue it.
        """
        if ev is None:
            return
        if device_fence:
            torch.cuda.synchronize(device)
        else:
            ev[2].synchronize()

    step_ms: list[float] = []
    opt_ms: list[float] = []
    wall_ms: list[float] = []
    comm: list[int] = []
    losses: list[float] = []

    variants = TritonVariants()

    def one_step(k: int) -> None:
        variants.step = k
        x, y = batches[k]
        w0 = time.perf_counter()
        if ev:
            ev[0].record()
        loss = fwd_bwd(x, y)
        if ev:
            ev[1].record()
        s0 = time.perf_counter()
        opt_step()
        s1 = time.perf_counter()
        if ev:
            ev[2].record()
        fence()
        w1 = time.perf_counter()
        wall_ms.append((w1 - w0) * 1e3)
        if ev:
            step_ms.append(ev[0].elapsed_time(ev[2]))
            opt_ms.append(ev[1].elapsed_time(ev[2]))
        else:
            step_ms.append((w1 - w0) * 1e3)
            opt_ms.append((s1 - s0) * 1e3)
        comm.append(comm_bytes())
        losses.append(float(loss.detach().float()))

    sync()
    tw = time.time()
    for k in range(spec["warmup"]):
        one_step(k)
    rec["warmup_s"] = round(time.time() - tw, 2)
    rec["warmup_step_ms"] = [round(v, 2) for v in wall_ms]
    peak_warm = torch.cuda.max_memory_allocated(device) if cuda else 0
    # how many timed steps fit before the deadline (all ranks agree: they run collectives in lockstep)
    recent = wall_ms[-max(1, len(wall_ms) // 2) :] or [1000.0]
    per_step_s = 1.3 * statistics.median(recent) / 1e3
    fit = int((deadline - time.time() - 20.0) / max(per_step_s, 1e-4))
    n_timed = max(1, min(spec["steps"], fit))
    t = torch.tensor([n_timed], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    n_timed = int(t.item())
    rec["timed_steps"] = n_timed
    rec["steps_cut_by_budget"] = n_timed < spec["steps"]
    for lst in (step_ms, opt_ms, wall_ms, comm):
        lst.clear()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    sync()
    tt = time.perf_counter()
    for k in range(spec["warmup"], spec["warmup"] + n_timed):
        one_step(k)
    sync()  # whatever the side streams still had in flight belongs to the timed steps
    timed_s = time.perf_counter() - tt

    rec["step_ms"] = [round(v, 3) for v in step_ms]
    # [step (warm-up steps first, from 0), kernel, ms]: the kernel variants built during the run
    rec["triton_variants"] = variants.events if variants.ok else None
    variants.close()
    rec["opt_ms"] = [round(v, 3) for v in opt_ms]
    rec["wall_ms"] = [round(v, 3) for v in wall_ms]
    rec["step_ms_median"], rec["step_ms_p99"] = _stats(step_ms)
    rec["opt_ms_median"], rec["opt_ms_p99"] = _stats(opt_ms)
    rec["wall_ms_median"], rec["wall_ms_p99"] = _stats(wall_ms)
    rec["timed_wall_s"] = round(timed_s, 4)
    rec["tokens_per_s"] = tokens_per_step * n_timed / timed_s
    if cuda:
        peak_timed = torch.cuda.max_memory_allocated(device)
        rec["peak_gib"] = round(max(peak_warm, peak_timed) / 2**30, 4)
        rec["peak_timed_gib"] = round(peak_timed / 2**30, 4)
    rec["comm_bytes_per_step"] = int(statistics.median(comm)) if comm else None
    rec["comm_bytes_steps"] = sorted(set(comm))
    rec["losses"] = [round(v, 4) for v in losses]
    rec["loss_first"], rec["loss_last"] = (round(losses[0], 4), round(losses[-1], 4)) if losses else (None, None)

    if spec["optimizer"] == "scao":
        rep = memory_report(opt)
        rec["opt_bytes"] = rep.total
        rec["opt_bytes_per_param"] = rep.bytes_per_param
        rec["opt_bytes_pieces"] = dict(rep.bytes)
        rec["owned_params"] = rep.owned_params
        rec["counters"] = {k: int(v) for k, v in dict(opt.counters).items()}
    else:
        sb = ds_state_bytes(zopt)
        rec["opt_bytes"] = sb["total"]
        rec["opt_bytes_per_param"] = sb["total"] / n_params
        rec["opt_bytes_pieces"] = sb
    # the ranks must still hold the same weights (a silent desync would make the timings meaningless)
    with torch.no_grad():
        local = torch.tensor(
            [float(sum(float(p.detach().double().sum()) for p in module.parameters()))],
            dtype=torch.float64,
            device=device,
        )
    parts = [torch.zeros_like(local) for _ in range(world)]
    dist.all_gather(parts, local)
    sums = [float(v) for v in parts]
    rec["weights_checksums"] = sums
    rec["weights_in_sync"] = max(sums) - min(sums) <= 1e-6 * max(1.0, abs(sums[0]))
    print(
        f"[bench.scaling] rank {rank}: {n_timed} timed steps, median {rec['step_ms_median']:.1f} ms, "
        f"p99 {rec['step_ms_p99']:.1f} ms, {rec['tokens_per_s']:,.0f} tok/s, opt "
        f"{rec['opt_bytes_per_param']:.3f} B/param, comm {rec['comm_bytes_per_step']} B/step",
        flush=True,
    )


# ===================================================================================================== main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker(args.worker)
    if args.report:
        print(write_report(Path(args.report)))
        return 0
    return launch(args)


if __name__ == "__main__":
    sys.exit(main())
