"""Train the same byte-level GPT on the same batches with each optimizer, side by side, and compare.

    python -m bench.compare --size small --optimizers adamw,muon,flash,soap,scao024_int8,scao --out runs/x
    python -m bench.compare --size small --sweep --optimizers adamw,scao --steps 1500 --out runs/sweep
    python -m bench.compare --size tiny --steps 10 --device cpu --out /tmp/smoke        # CPU smoke

Every run uses the same init (``torch.manual_seed(seed)`` before building the model), the same batches
(:class:`scao_dist.demo.ByteCorpus` with the run's seed; held-out batches fixed for all runs), the same lr
schedule (linear warmup over ``--warmup`` steps, then cosine to ``--final-lr-frac`` of the peak at
``--cosine-steps``), bf16 autocast on CUDA (fp32 on CPU). Per run it records the train-loss curve, held-out
loss every ``--eval-every`` steps, ms/step (median, p99; device-synchronised, after ``--timing-skip``
warm-up steps), ms inside ``optimizer.step()`` (CUDA events), optimizer state bytes/param (everything it
holds: see :func:`bench.optimizers.state_bytes`), peak GPU memory, steps and train-seconds to reach a target
held-out loss, and the NaN count. One JSON per run (optimizer x lr x seed) goes to ``--out``, then
``results.md`` and the loss-vs-step / loss-vs-seconds plots (see :mod:`bench.report`).

lrs: ``--lrs`` names each optimizer's lr(s) (``"adamw=5e-4;scao=1e-3,2e-3"``, a JSON object, or a JSON file
such as the ``best_lrs.json`` a sweep writes); optimizers not named get ``--lr`` if given, else their grid
(``--sweep``: :data:`bench.optimizers.DEFAULT_SWEEP_LRS`) or their best lr from DESIGN.md
(:data:`bench.optimizers.DEFAULT_BEST_LR`). With several lrs per optimizer the report compares each at its
best. A missing package is reported as "not_installed", an out-of-memory as "oom"; the suite goes on.

Time: ``--time-budget-s`` stops the suite gracefully (a run in progress is cut at the deadline, evaluated,
and marked "truncated"; runs that cannot start are marked "skipped_budget"), ``--max-minutes-per-run``
caps each run, and the plan with its time estimate is printed before anything starts (``--fit-steps``
lowers ``--steps`` until the estimate fits the budget).

Sharing one device: ``--shard I/K`` runs only the runs of the plan whose index is I modulo K, so K processes
(same flags, same ``--out``, ``--shard 0/K`` ... ``--shard K-1/K``) run the plan side by side on one GPU, each
with its own ``--time-budget-s``, ``--max-minutes-per-run`` and ``--skip-existing``. Their step times are
not those of a run alone: every record says ``"concurrent_shards": K`` and :mod:`bench.report` shows only
the losses of such runs. ``--fit-steps`` is refused with K > 1 (its estimate is of runs alone), and with
K > 1 no shard writes the report (the others may still be running): ``python -m bench.report OUT`` after all.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
import traceback
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from bench import optimizers as O

SIZES = {
    # size: (config factory name, default batch size)
    "tiny": ("tiny", 8),
    "small": ("small", 16),
    "large": ("large", 8),
}
EVAL_SEED = 987_654  # held-out batches: the same for every optimizer, lr and seed
SETUP_S = {"tiny": 1.0, "small": 4.0, "large": 20.0}  # model build + first eval, per run (estimate)


# ----------------------------------------------------------------------------------------------- args
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("--optimizers", default="adamw,muon,flash,soap,scao024,scao024_int8,scao,scao_soap",
                   help=f"comma-separated, from {', '.join(O.ALL)} and any --scao-variant names")  # fmt: skip
    p.add_argument("--size", choices=sorted(SIZES), default="small")
    p.add_argument("--batch-size", type=int, default=None, help="default: 8 tiny, 16 small, 8 large")
    p.add_argument("--seq-len", type=int, default=None, help="default: the size's (128 tiny, 512 otherwise)")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--fit-steps", action="store_true", help="lower --steps until the estimate fits the budget")
    p.add_argument("--warmup", type=int, default=50, help="linear warmup steps")
    p.add_argument("--cosine-steps", type=int, default=None, help="cosine horizon (default: --steps)")
    p.add_argument("--final-lr-frac", type=float, default=0.1, help="cosine ends at this fraction of the lr")
    p.add_argument("--lr", type=float, default=None, help="one lr for every optimizer not named in --lrs")
    p.add_argument("--lrs", default=None, help="per-optimizer lrs: 'adamw=5e-4;scao=1e-3,2e-3', JSON, or a JSON file")
    p.add_argument("--sweep", action="store_true", help="each optimizer not in --lrs runs its default lr grid")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (init and batch order)")
    p.add_argument("--betas", default="own",
                   help="'own' (default): each optimizer's own default betas; or 'b1,b2' forced on all")  # fmt: skip
    p.add_argument("--eps", type=float, default=1e-8)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--scao-kwargs", default=None, help="JSON kwargs for scao_dist's default 'scao' run")
    p.add_argument("--scao-variant", action="append", default=[], metavar="NAME=JSON",
                   help='extra scao_dist run, e.g. scao_b95=\'{"betas": [0.9, 0.95]}\' (keys "weights": '
                        'bf16|fp32 and "base": scao|scao_soap are understood); repeatable')  # fmt: skip
    p.add_argument("--opt-kwargs", default=None, help="JSON {name: {kwarg: value}} overriding any optimizer")
    p.add_argument("--heavyball-compile", default="default", help="heavyball.utils.compile_mode on CUDA ('none': off)")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--eval-batches", type=int, default=8)
    p.add_argument(
        "--target-loss",
        type=float,
        default=None,
        help="held-out loss for steps/seconds-to-target (report default: AdamW's best final loss)",
    )
    p.add_argument("--timing-skip", type=int, default=10, help="warm-up steps left out of the ms/step statistics")
    p.add_argument("--profile-phases", type=int, default=0, metavar="N",
                   help="after training, N extra steps with scao_dist's step broken into phases and every "
                        "optimizer's step-transient memory measured (not part of any other number)")  # fmt: skip
    p.add_argument("--max-nan-streak", type=int, default=20,
                   help="stop a run after this many non-finite losses in a row")  # fmt: skip
    p.add_argument("--time-budget-s", type=float, default=None, help="whole suite, wall-clock")
    p.add_argument("--max-minutes-per-run", type=float, default=None)
    p.add_argument("--max-corpus-bytes", type=int, default=None, help="read at most this much of the stdlib")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--no-amp", action="store_true", help="no bf16 autocast on CUDA")
    p.add_argument("--no-tf32", action="store_true",
                   help="full-fp32 matmuls (default: TF32 for every optimizer, as training scripts set)")  # fmt: skip
    p.add_argument("--skip-existing", action="store_true", help="keep finished runs already in --out")
    p.add_argument("--shard", type=parse_shard, default=(0, 1), metavar="I/K",
                   help="only the runs of the plan with index %% K == I (K processes, one GPU)")  # fmt: skip
    p.add_argument("--concurrent", type=int, default=1, metavar="N",
                   help="N processes (this one included) share the device: records say so, so the report shows "
                        "no timing for them (set by --shard I/K too)")  # fmt: skip
    p.add_argument("--no-report", action="store_true", help="write the run JSONs only")
    p.add_argument("--dry-run", action="store_true", help="print the plan and estimate, run nothing")
    p.add_argument("--out", default="runs/bench")
    args = p.parse_args(argv)
    if args.fit_steps and args.shard[1] > 1:
        p.error(f"--fit-steps cannot be combined with --shard {args.shard[0]}/{args.shard[1]}: its estimate is of "
                "runs alone on the device, and runs sharing it are slower; give --steps yourself")  # fmt: skip
    return args


def parse_shard(text: str) -> tuple[int, int]:
    """``'I/K'`` -> (I, K) with integers 0 <= I < K (the argparse type of ``--shard``)."""
    i, sep, k = str(text).strip().partition("/")
    try:
        index, count = int(i), int(k)
    except ValueError:
        index, count = -1, 0
    if not sep or not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"wants I/K with integers 0 <= I < K (e.g. --shard 0/4), got {text!r}")
    return index, count


def shard_runs(runs: list[Run], index: int, count: int) -> list[tuple[int, Run]]:
    """Shard ``index`` of ``count``: the plan's j-th run goes to shard j % count (returned as (j, run) pairs)."""
    return [(j, r) for j, r in enumerate(runs) if j % count == index]


def parse_lrs(text: str | None, size: str | None = None) -> dict[str, list[float]]:
    """``'a=1e-3;b=1e-3,2e-3'``, a JSON object or a JSON file -> {name: [lr, ...]}.

    A ``best_lrs.json`` written by :mod:`bench.report` holds ``{"best_lrs": {size: {name: lr}}}``: the entry of
    ``size`` is used (or the only one).
    """
    if not text:
        return {}
    raw: Any
    if text.strip().startswith("{"):
        raw = json.loads(text)
    elif os.path.isfile(text):
        raw = json.loads(Path(text).read_text())
    else:
        raw = {}
        for part in text.replace(" ", "").split(";"):
            if part:
                name, _, vals = part.partition("=")
                raw[name] = [float(v) for v in vals.split(",") if v]
    if "best_lrs" in raw:
        by_size = raw["best_lrs"]
        if size in by_size:
            raw = by_size[size]
        elif len(by_size) == 1:
            raw = next(iter(by_size.values()))
        else:
            raise SystemExit(f"--lrs: best_lrs has sizes {sorted(by_size)}, none of them {size!r}")
    return {k: [float(x) for x in (v if isinstance(v, list) else [v])] for k, v in raw.items()}


def parse_variants(items: list[str]) -> dict[str, dict[str, Any]]:
    out = {}
    for item in items:
        name, _, js = item.partition("=")
        if not name.replace("_", "").isalnum() or not js:
            raise SystemExit(f"--scao-variant wants NAME=JSON with NAME of letters/digits/_, got {item!r}")
        out[name] = json.loads(js)
    return out


# ---------------------------------------------------------------------------------------------- setup
@dataclass
class Run:
    name: str
    lr: float
    seed: int
    spec: O.Spec


def plan_runs(args: argparse.Namespace, specs: dict[str, O.Spec]) -> list[Run]:
    named = parse_lrs(args.lrs, args.size)
    seeds = [int(s) for s in str(args.seeds).split(",") if s != ""]
    lrs: dict[str, list[float]] = {}
    for name, spec in specs.items():
        prior = name if name in O.DEFAULT_BEST_LR else ("scao_soap" if spec.kwargs.get("rank") == "full" else "scao")
        if name in named:
            lrs[name] = named[name]
        elif args.lr is not None:
            lrs[name] = [args.lr]
        elif args.sweep:  # most informative first: nearest the known best, so a cut sweep still brackets it
            grid = O.DEFAULT_SWEEP_LRS[prior]
            best = O.DEFAULT_BEST_LR[prior]
            lrs[name] = sorted(grid, key=lambda x: (abs(math.log(x / best)), x))
        else:
            lrs[name] = [O.DEFAULT_BEST_LR[prior]]
    runs = []
    for seed in seeds:  # round-robin: every optimizer's first lr before anyone's second
        for r in range(max(len(v) for v in lrs.values())):
            for name, spec in specs.items():
                if r < len(lrs[name]):
                    runs.append(Run(name, lrs[name][r], seed, spec))
    return runs


def prior_ms(spec: O.Spec, size: str) -> float:
    table = O.PRIOR_MS.get(size, O.PRIOR_MS["small"])
    if spec.name in table:
        return table[spec.name]
    return table["scao_soap" if spec.kwargs.get("rank") == "full" else "scao"]


def estimate_run_s(run: Run, args: argparse.Namespace, steps: int, cuda: bool) -> float:
    ms = prior_ms(run.spec, args.size)
    adamw_ms = O.PRIOR_MS.get(args.size, O.PRIOR_MS["small"])["adamw"]
    n_evals = steps // args.eval_every + 2
    eval_s = n_evals * args.eval_batches * adamw_ms / 3 / 1e3
    setup = SETUP_S.get(args.size, 5.0) + (O.PRIOR_SETUP_S.get(run.spec.kind, 0.0) if cuda else 0.0)
    return setup + (steps + args.profile_phases) * ms / 1e3 + eval_s


def env_info(device: torch.device) -> dict[str, Any]:
    import importlib.metadata as md

    info: dict[str, Any] = {
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
        "host": platform.node(),
        "cpu": platform.processor() or platform.machine(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
        info["gpu_mem_gib"] = round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
    for dist in ("triton", "flashoptim", "heavyball", "scao", "scao-dist", "numpy", "opt-einsum"):
        try:
            info[dist] = md.version(dist)
        except md.PackageNotFoundError:
            info[dist] = None
    try:
        import scao_dist

        info["scao_dist"] = scao_dist.__version__
        pkg = Path(scao_dist.__file__).resolve().parent
        root = pkg.parent
        digest = hashlib.sha1()  # identifies the code where there is no .git (the GPU copy of the tree)
        for f in sorted(pkg.rglob("*.py")):
            digest.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes())
        info["scao_dist_src"] = digest.hexdigest()[:10]
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5)  # fmt: skip
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)  # fmt: skip
        if rev.returncode == 0:
            info["git"] = rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except Exception:
        pass
    return info


def lr_factor(step: int, warmup: int, horizon: int, final_frac: float) -> float:
    """Linear warmup to 1 over ``warmup`` steps, then cosine to ``final_frac`` at ``horizon``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min((step - warmup) / max(horizon - warmup, 1), 1.0)
    return final_frac + (1.0 - final_frac) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _is_oom(e: BaseException) -> bool:
    oom_types = tuple(t for t in (getattr(torch, "OutOfMemoryError", None), torch.cuda.OutOfMemoryError) if t)
    return isinstance(e, oom_types) or "out of memory" in str(e).lower()


def _stats(xs: list[float]) -> dict[str, float] | None:
    if not xs:
        return None
    s = sorted(xs)
    p99 = s[min(len(s) - 1, math.ceil(0.99 * len(s)) - 1)]
    return {"median": round(statistics.median(s), 4), "p99": round(p99, 4), "mean": round(statistics.fmean(s), 4),
            "min": round(s[0], 4), "max": round(s[-1], 4), "n": len(s)}  # fmt: skip


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------------------------- one run
class Context:
    """What every run shares: data, device, flags, deadlines."""

    def __init__(self, args: argparse.Namespace, device: torch.device, steps: int) -> None:
        from scao_dist.demo import ByteCorpus, GPTConfig, stdlib_corpus

        self.args, self.device, self.steps = args, device, steps
        self.cuda = device.type == "cuda"
        self.amp = self.cuda and not args.no_amp
        factory, default_bs = SIZES[args.size]
        self.cfg = getattr(GPTConfig, factory)()
        if args.seq_len:
            self.cfg.seq_len = args.seq_len
        self.batch_size = args.batch_size or default_bs
        self.train, self.val = stdlib_corpus(max_bytes=args.max_corpus_bytes)
        self.ByteCorpus = ByteCorpus
        val = ByteCorpus(self.val, self.cfg.seq_len, self.batch_size, seed=EVAL_SEED)
        self.eval_set = [val.batch(k, device) for k in range(args.eval_batches)]
        self.horizon = args.cosine_steps or steps
        self.betas = None if args.betas == "own" else tuple(float(b) for b in args.betas.split(","))
        hb = args.heavyball_compile
        self.heavyball_compile = None if hb.lower() == "none" else hb


def base_record(ctx: Context, run: Run) -> dict[str, Any]:
    """The fields every run's JSON has, whatever became of the run."""
    args = ctx.args
    return {
        "schema": 1, "run_id": uuid.uuid4().hex[:12],
        "started_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "name": run.name, "family": run.spec.family, "kind": run.spec.kind, "lr": run.lr,
        "seed": run.seed, "size": args.size, "steps": ctx.steps, "steps_done": 0, "status": "running",
        "message": "", "kwargs": run.spec.kwargs, "weights": run.spec.weights,
        "model": {"d_model": ctx.cfg.d_model, "n_layer": ctx.cfg.n_layer, "n_head": ctx.cfg.n_head,
                  "seq_len": ctx.cfg.seq_len, "params": None},
        "batch_size": ctx.batch_size, "warmup": args.warmup, "cosine_steps": ctx.horizon,
        "final_lr_frac": args.final_lr_frac, "betas": list(ctx.betas) if ctx.betas else "own", "eps": args.eps,
        "weight_decay": args.weight_decay, "amp": "bf16" if ctx.amp else "fp32", "eval_every": args.eval_every,
        "eval_batches": args.eval_batches, "timing_skip": args.timing_skip, "target_loss": args.target_loss,
        "train_loss": [], "val": [], "step_ms": [], "opt_ms": [], "nan_count": 0,
        "concurrent_shards": max(args.shard[1], args.concurrent), "shard": f"{args.shard[0]}/{args.shard[1]}",
    }  # fmt: skip


def run_one(ctx: Context, run: Run, deadline: float) -> dict[str, Any]:
    from scao_dist.demo import GPT

    args, device = ctx.args, ctx.device
    rec = base_record(ctx, run)
    t_start = time.perf_counter()
    model = opt = None
    if ctx.cuda:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        rec["mem_at_start_gib"] = round(torch.cuda.memory_allocated(device) / 2**30, 4)  # leaks of earlier runs
    try:
        torch.manual_seed(run.seed)
        model = GPT(ctx.cfg)  # built on the CPU in fp32: the same init for every optimizer
        rec["model"]["params"] = O.n_params(model)
        O.prepare_model(run.spec, model)
        model.to(device)
        built = O.build(run.spec, model, run.lr, betas=ctx.betas, eps=args.eps, weight_decay=args.weight_decay,
                        device=device, heavyball_compile=ctx.heavyball_compile)  # fmt: skip
        opt = built.opt
        rec.update(package=built.package, version=built.version, notes=built.notes)
        rec["betas_used"] = sorted({str(tuple(g["betas"])) for g in getattr(opt, "param_groups", []) if "betas" in g})
        _train(ctx, run, model, opt, rec, deadline)
    except O.NotInstalledError as e:
        rec["status"], rec["message"] = "not_installed", str(e)
    except Exception as e:
        if _is_oom(e):
            rec["status"], rec["message"] = "oom", (str(e).splitlines() or [type(e).__name__])[0][:300]
        else:
            rec["status"], rec["message"] = "error", f"{type(e).__name__}: {e}"[:500]
            rec["traceback"] = traceback.format_exc()[-3000:]
    finally:
        if ctx.cuda:
            rec.setdefault("peak_gib", round(torch.cuda.max_memory_allocated(device) / 2**30, 4))
        if opt is not None:
            with contextlib.suppress(Exception):
                O.close(opt)
        del model, opt
        gc.collect()
        if ctx.cuda:
            torch.cuda.empty_cache()
    rec["wall_s"] = round(time.perf_counter() - t_start, 2)
    return rec


def _evaluate(ctx: Context, model: torch.nn.Module) -> float:
    total = 0.0
    with torch.no_grad(), torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=ctx.amp):
        for x, y in ctx.eval_set:
            total += float(model(x, y))
    return total / max(len(ctx.eval_set), 1)


def _set_lr(opt: Any, base: list[float], factor: float) -> None:
    for g, b in zip(opt.param_groups, base):
        g["lr"] = b * factor


def _train(ctx: Context, run: Run, model: torch.nn.Module, opt: Any, rec: dict[str, Any], deadline: float) -> None:
    args, device, cuda = ctx.args, ctx.device, ctx.cuda
    data = ctx.ByteCorpus(ctx.train, ctx.cfg.seq_len, ctx.batch_size, seed=run.seed)
    base = [float(g["lr"]) for g in opt.param_groups]
    params = rec["model"]["params"]
    model.train()
    rec["val"].append([0, round(_evaluate(ctx, model), 5), 0.0])
    train_s = 0.0
    streak = 0
    status = "ok"
    x, y = data.batch(0, device)
    ev = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) if cuda else None
    step = 0
    for step in range(ctx.steps):
        if time.perf_counter() > deadline:
            status = "truncated"
            rec["message"] = f"time budget reached after {step} of {ctx.steps} steps"
            break
        _set_lr(opt, base, lr_factor(step, args.warmup, ctx.horizon, args.final_lr_frac))
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=ctx.amp):
            loss = model(x, y)
        loss.backward()
        if cuda:
            ev[0].record()
        else:
            s0 = time.perf_counter()
        opt.step()
        if cuda:
            ev[1].record()
        else:
            s1 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        _sync(device)
        dt = time.perf_counter() - t0
        train_s += dt
        rec["step_ms"].append(round(dt * 1e3, 3))
        rec["opt_ms"].append(round(ev[0].elapsed_time(ev[1]) if cuda else (s1 - s0) * 1e3, 3))
        lv = float(loss.detach())
        rec["train_loss"].append(round(lv, 5) if math.isfinite(lv) else None)
        rec["steps_done"] = step + 1
        if not math.isfinite(lv):
            rec["nan_count"] += 1
            streak += 1
            if streak >= args.max_nan_streak:
                status = "diverged"
                rec["message"] = f"{streak} non-finite losses in a row at step {step + 1}"
                break
        else:
            streak = 0
        x, y = data.batch(step + 1, device)  # next batch, outside the timed region
        if (step + 1) % args.eval_every == 0 and step + 1 < ctx.steps:
            vl = _evaluate(ctx, model)
            rec["val"].append([step + 1, round(vl, 5) if math.isfinite(vl) else None, round(train_s, 3)])
    done = rec["steps_done"]
    if done and rec["val"][-1][0] != done:
        vl = _evaluate(ctx, model)
        rec["val"].append([done, round(vl, 5) if math.isfinite(vl) else None, round(train_s, 3)])
    rec["status"] = status
    skip = min(args.timing_skip, done // 2)  # a run shorter than the warm-up still gets numbers (flagged)
    rec["timing_skip"] = skip
    rec["ms_step"] = _stats(rec["step_ms"][skip:])
    rec["ms_opt_step"] = _stats(rec["opt_ms"][skip:])
    _retime(rec, skip)
    if cuda:
        rec["peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 4)
    sb = O.state_bytes(opt, model)
    rec["state"] = sb
    rec["state_bytes"] = sb["total"]
    rec["state_bytes_per_param"] = round(sb["total"] / max(params, 1), 4)
    rec["weight_bytes_per_param"] = next(model.parameters()).element_size()
    if O.is_scao_dist(opt):
        rec["scao_dist"] = O.scao_dist_extras(opt)
    if args.profile_phases > 0 and status in ("ok", "truncated") and time.perf_counter() < deadline:
        _profile(ctx, run, model, opt, data, base, rec, deadline)


def _retime(rec: dict[str, Any], skip: int) -> None:
    """Train-seconds without one-off warm-up: the first ``skip`` steps count at the median step time.

    Compilation (heavyball's torch.compile, Triton autotuning) lands in those steps; charging it to the
    loss-vs-seconds curve would measure the compiler, not the optimizer. The excess is kept apart.
    """
    ms = list(rec["step_ms"])
    med = (rec.get("ms_step") or {}).get("median")
    excess = 0.0
    if med is not None:
        for i in range(min(skip, len(ms))):
            excess += ms[i] - med
            ms[i] = med
    cum, acc = [], 0.0
    for x in ms:
        acc += x
        cum.append(acc / 1e3)
    for v in rec["val"]:
        v[2] = round(cum[v[0] - 1], 3) if v[0] > 0 else 0.0
    rec["train_s"] = round(acc / 1e3, 3)
    rec["train_s_raw"] = round(sum(rec["step_ms"]) / 1e3, 3)
    rec["warmup_excess_s"] = round(excess / 1e3, 3)


def _profile(ctx: Context, run: Run, model: torch.nn.Module, opt: Any, data: Any, base: list[float],
             rec: dict[str, Any], deadline: float) -> None:  # fmt: skip
    """Extra steps after training: scao_dist's phases, and every optimizer's step-transient memory."""
    from bench.phases import PhaseProfiler

    device, cuda = ctx.device, ctx.cuda
    prof = PhaseProfiler(device) if O.is_scao_dist(opt) else None
    if prof is not None:
        prof.install()
    transient = []
    start = rec["steps_done"]
    try:
        _set_lr(opt, base, ctx.args.final_lr_frac)
        for j in range(ctx.args.profile_phases):
            if time.perf_counter() > deadline:
                break
            x, y = data.batch(start + j, device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=ctx.amp):
                loss = model(x, y)
            loss.backward()
            _sync(device)
            if cuda:
                before = torch.cuda.memory_allocated(device)
                torch.cuda.reset_peak_memory_stats(device)
            if prof is not None:
                prof.begin_step()
            opt.step()
            if prof is not None:
                prof.end_step()
            _sync(device)
            if cuda:
                transient.append(torch.cuda.max_memory_allocated(device) - before)
            opt.zero_grad(set_to_none=True)
    finally:
        if prof is not None:
            prof.uninstall()
    if prof is not None:
        rec["phases"] = prof.summary()
    if transient:
        rec["step_transient_mib"] = round(max(transient) / 2**20, 2)


# ------------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":  # the same for every optimizer; only fp32 matmuls are affected
        torch.backends.cuda.matmul.allow_tf32 = not args.no_tf32
    variants = parse_variants(args.scao_variant)
    overrides = json.loads(args.opt_kwargs) if args.opt_kwargs else {}
    if args.scao_kwargs:
        overrides.setdefault("scao", {}).update(json.loads(args.scao_kwargs))
    names = [n.strip() for n in args.optimizers.split(",") if n.strip()]
    names += [v for v in variants if v not in names]
    specs = {n: O.make_spec(n, variants, overrides) for n in names}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    steps = args.steps
    budget = args.time_budget_s
    reserve = 0.0 if budget is None else (5.0 if args.no_report else min(30.0, 0.05 * budget))  # report, plots
    shard, n_shards = args.shard
    plan = plan_runs(args, specs)
    mine = shard_runs(plan, shard, n_shards)
    runs = [r for _, r in mine]

    def total_estimate(n_steps: int) -> float:
        return sum(estimate_run_s(r, args, n_steps, device.type == "cuda") for r in runs)

    est = total_estimate(steps)
    if budget is not None and est > budget - reserve and args.fit_steps:
        unit = max(args.eval_every, 1)
        fitted = steps
        while fitted > unit and total_estimate(fitted) > budget - reserve:
            fitted -= unit
        print(f"[plan] estimate {est:.0f} s for {steps} steps exceeds the budget of {budget:.0f} s: "
              f"--fit-steps lowers steps to {fitted}", flush=True)  # fmt: skip
        steps = fitted
        est = total_estimate(steps)
    if n_shards > 1:
        print(f"[plan] shard {shard}/{n_shards}: {len(runs)} of the plan's {len(plan)} runs (index % {n_shards} == "
              f"{shard}); the estimate is for runs alone on the device, and these share it", flush=True)  # fmt: skip
    print(f"[plan] {len(runs)} runs on {device} ({args.size}, {steps} steps, batch "
          f"{args.batch_size or SIZES[args.size][1]}, seeds {args.seeds}); estimate {est:.0f} s from priors "
          f"(H100 numbers of DESIGN.md for small/large; guesses where none)"
          + (f"; budget {budget:.0f} s" if budget else ""), flush=True)  # fmt: skip
    for j, r in mine:
        run_s = estimate_run_s(r, args, steps, device.type == "cuda")
        print(f"[plan]   #{j + 1:<3} {r.name:<14} lr {O.fmt_lr(r.lr):<8} seed {r.seed}  ~{run_s:.0f} s", flush=True)
    if budget is not None and est > budget:
        print("[plan] WARNING: the estimate exceeds the budget: later runs will be truncated or skipped", flush=True)
    if args.dry_run:
        return 0
    if not runs:
        print(f"[done] shard {shard}/{n_shards} has no run of the plan's {len(plan)}", flush=True)
        return 0

    ctx = Context(args, device, steps)
    env = env_info(device)
    cmd = "python -m bench.compare " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    suite_deadline = t0 + budget - reserve if budget is not None else math.inf
    min_run_s = SETUP_S.get(args.size, 5.0) + 5.0
    tag = f" shard {shard}/{n_shards}" if n_shards > 1 else ""
    for i, r in mine:
        path = out / f"{args.size}_{r.name}_lr{O.fmt_lr(r.lr)}_s{r.seed}.json"
        if args.skip_existing and path.exists():
            old = json.loads(path.read_text())
            if old.get("status") in ("ok", "not_installed") and old.get("steps") == steps:
                print(f"[run {i + 1}/{len(plan)}{tag}] {r.name} lr {O.fmt_lr(r.lr)} seed {r.seed}: kept from {path}")
                continue
        now = time.perf_counter()
        deadline = suite_deadline
        if args.max_minutes_per_run:
            deadline = min(deadline, now + 60 * args.max_minutes_per_run)
        if deadline - now < min_run_s:
            rec = base_record(ctx, r)
            rec["status"] = "skipped_budget"
            rec["message"] = f"{max(deadline - now, 0):.0f} s left in the time budget"
        else:
            print(f"[run {i + 1}/{len(plan)}{tag}] {r.name} lr {O.fmt_lr(r.lr)} seed {r.seed} ...", flush=True)
            rec = run_one(ctx, r, deadline)
        rec["env"] = env
        rec["cmd"] = cmd
        path.write_text(json.dumps(rec, indent=1, default=str))
        print(f"[run {i + 1}/{len(plan)}{tag}] {_one_line(rec)}", flush=True)
    print(f"[done] {len(runs)} runs{tag} in {time.perf_counter() - t0:.0f} s; JSON in {out}", flush=True)
    if args.no_report:
        return 0
    if n_shards > 1:
        print(f"[done] no report from one of {n_shards} shards: once every shard has finished, "
              f"python -m bench.report {shlex.quote(str(out))}", flush=True)  # fmt: skip
        return 0
    from bench import report

    md = report.render_dir([out], out, target_loss=args.target_loss)
    print(md, flush=True)
    return 0


def _one_line(rec: dict[str, Any]) -> str:
    head = f"{rec['name']} lr {O.fmt_lr(rec['lr'])} seed {rec['seed']}: {rec['status']}"
    if rec["status"] not in ("ok", "truncated", "diverged"):
        return f"{head} {rec.get('message', '')}"
    val = rec["val"][-1][1] if rec.get("val") else None
    ms = (rec.get("ms_step") or {}).get("median")
    parts = [head, f"steps {rec['steps_done']}", f"val {val}", f"ms/step {ms}",
             f"state {rec.get('state_bytes_per_param')} B/param", f"NaN {rec.get('nan_count')}"]  # fmt: skip
    if rec.get("peak_gib") is not None:
        parts.append(f"peak {rec['peak_gib']:.2f} GiB")
    parts.append(f"wall {rec.get('wall_s')} s")
    return ", ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
