"""The main job: train a GPT with SCAO (or AdamW, for a side-by-side) on the Python standard library.

One process, or several through torchrun; GPU (NCCL) when there is one, else CPU (gloo)::

    python launch/train.py                                    # defaults: tiny model on CPU, small on GPU
    torchrun --nproc-per-node 4 launch/train.py --steps 3000  # several ranks
    python launch/train.py --config run.yaml --lr 5e-4        # YAML config; flags override it
    python launch/train.py --optimizer adamw                  # writes runs/adamw/ next to runs/scao/
    python launch/train.py --compare runs/adamw               # overlay another run in the loss PNG
    python launch/train.py --resume                           # continue from OUT/ckpt.pt
    python launch/train.py --scao precond_freq=20 --scao rank_max=128   # any SCAO knob

Every flag is a field of :class:`TrainConfig` (``--grad-accum`` is ``grad_accum``); a YAML file uses
the field names as keys (``scao:`` is a mapping of SCAO knobs). Outputs in ``--out`` (default
``runs/<optimizer>``): ``config.yaml`` (the resolved config), ``metrics.jsonl`` (one JSON row per
log step and per evaluation), ``ckpt.pt`` (model + optimizer + scheduler + step, rewritten every
``ckpt_every`` steps, atomically) and ``loss.png``.

Your own model and data, without editing this file::

    python launch/train.py --model mypkg.models:build --data mypkg.data:batch

or from Python, ``train(model_fn=build, batch_fn=batch, cfg=TrainConfig(...))``, where

* ``model_fn(cfg) -> nn.Module`` whose ``forward(inputs, targets)`` returns the scalar loss;
* ``batch_fn(split, index, cfg) -> (inputs, targets)`` for ``split`` in ``"train"``/``"val"``;
  ``index`` is a global micro-batch number, distinct per (step, micro-step, rank), so a batch
  depends only on its index and a resumed run sees exactly the batches it would have seen.

With several ranks SCAO shards its state over them and averages the gradients itself
(``grad_sync="scao"``: the model is NOT wrapped in DDP); AdamW runs under DDP.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import json
import math
import os
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml
from torch import nn
from tqdm import tqdm

from scao_dist import SCAO, memory_report
from scao_dist.demo import GPT, ByteCorpus, GPTConfig, stdlib_corpus
from scao_dist.shard.comm import closing_process_group

ModelFn = Callable[["TrainConfig"], nn.Module]
BatchFn = Callable[[str, int, "TrainConfig"], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class TrainConfig:
    """Everything a run depends on. ``None`` means: the default for this device (see :func:`resolve`)."""

    model: str = "auto"  # tiny | small | large | auto (tiny on CPU, small on GPU) | pkg.module:function
    data: str = "stdlib"  # stdlib | pkg.module:function (see the module docstring)
    optimizer: str = "scao"  # scao | adamw
    steps: int | None = None  # optimizer steps (CPU 400, GPU 1500)
    batch_size: int | None = None  # sequences per rank per micro-step (16)
    seq_len: int | None = None  # tokens per sequence (the model's: 128 tiny, 512 small/large)
    grad_accum: int = 1  # micro-steps per optimizer step
    lr: float | None = None  # peak learning rate (CPU 2e-3, GPU 1e-3)
    warmup: int | None = None  # linear warmup steps (5% of steps, at least 1)
    min_lr_frac: float = 0.1  # cosine decays to this fraction of lr
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # Adam betas
    weight_decay: float = 0.01  # on >= 2-D weights only (norm gains, biases: none)
    grad_clip: float = 1.0  # 0 turns it off; SCAO on several ranks: clips each rank's local gradient
    dtype: str = "auto"  # auto | bf16 | fp32: parameter dtype (auto: bf16 for SCAO on GPU, else fp32)
    scao: dict[str, Any] = field(default_factory=dict)  # SCAO knobs: --scao precond_freq=20 (repeatable)
    eval_every: int | None = None  # held-out evaluation every N steps (and at the first and last)
    eval_batches: int = 8  # batches per rank in one evaluation (the same batches every time)
    log_every: int = 10  # a metrics row every N steps
    ckpt_every: int | None = None  # checkpoint every N steps (and at the end); 0: only at the end
    out: str | None = None  # output directory (runs/<optimizer>)
    resume: str | None = None  # --resume: OUT/ckpt.pt (if present); --resume PATH: that checkpoint
    stop_at: int | None = None  # stop after this step (checkpointing), as a time-limited job would
    seed: int = 0  # initial weights and batch order
    device: str = "auto"  # auto | cpu | cuda
    max_bytes: int | None = None  # read at most this many bytes of the stdlib corpus
    progress: bool = True  # tqdm bar on rank 0
    plot: bool = True  # loss-curve PNG at the end
    compare: list[str] = field(default_factory=list)  # other run directories to overlay in the PNG


# ----------------------------------------------------------------------------------- config
def _parse_value(text: str) -> Any:
    return yaml.safe_load(text)


def _coerce(name: str, value: Any) -> Any:
    """Give a YAML/flag value its field's type (YAML reads ``1e-3`` as a string)."""
    kind = {f.name: str(f.type) for f in dataclasses.fields(TrainConfig)}[name]
    if value is None or value == "None":
        return None
    for typ in (int, float):
        if kind.startswith(typ.__name__):
            return typ(value) if typ is float or not isinstance(value, float) else int(value)
    if kind == "str" or kind.startswith("str |"):
        return str(value)
    if kind == "bool":
        return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes", "on")
    if name == "betas":
        return [float(b) for b in value]
    if name == "scao":
        return {k: _parse_value(v) if isinstance(v, str) else v for k, v in dict(value).items()}
    return value


def _field_help() -> dict[str, str]:
    """The comment after each :class:`TrainConfig` field, as its flag's help text."""
    import inspect
    import re

    src = inspect.getsource(TrainConfig)
    return {m[1]: m[2].replace("%", "%%") for m in re.finditer(r"^    (\w+): .*?  # (.*)$", src, re.M)}


def build_parser() -> argparse.ArgumentParser:
    """Flags for every :class:`TrainConfig` field; unset flags stay absent (so YAML values survive)."""
    helps = _field_help()
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", help="YAML file of TrainConfig fields (flags override it)")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        kw: dict[str, Any] = dict(dest=f.name, default=argparse.SUPPRESS, help=helps.get(f.name))
        if f.name == "scao":
            p.add_argument(flag, action="append", metavar="KEY=VALUE", **kw)
        elif f.name == "compare":
            p.add_argument(flag, nargs="*", metavar="DIR", **kw)
        elif f.name == "betas":
            p.add_argument(flag, nargs=2, type=float, metavar=("B1", "B2"), **kw)
        elif f.name == "resume":
            p.add_argument(flag, nargs="?", const="auto", metavar="CKPT", **kw)
        elif f.type in ("bool",):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        else:
            p.add_argument(flag, **kw)
    return p


def load_config(argv: list[str] | None = None) -> TrainConfig:
    """Defaults, then the YAML file (``--config``), then the flags."""
    args = vars(build_parser().parse_args(argv))
    values: dict[str, Any] = {}
    path = args.pop("config", None)
    if path:
        with open(path) as fh:
            values.update(yaml.safe_load(fh) or {})
    if "scao" in args:
        knobs = dict(values.get("scao") or {})
        for item in args.pop("scao"):
            key, sep, val = item.partition("=")
            if not sep:
                raise SystemExit(f"--scao expects KEY=VALUE, got {item!r}")
            knobs[key.strip()] = _parse_value(val)
        values["scao"] = knobs
    values.update(args)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise SystemExit(f"unknown config keys {unknown}; known: {sorted(known)}")
    return TrainConfig(**{k: _coerce(k, v) for k, v in values.items()})


def resolve(cfg: TrainConfig, device: torch.device) -> TrainConfig:
    """Fill the ``None``/``auto`` fields with this device's defaults (a copy)."""
    gpu = device.type == "cuda"
    c = dataclasses.replace(cfg, betas=list(cfg.betas), scao=dict(cfg.scao), compare=list(cfg.compare))
    if c.optimizer not in ("scao", "adamw"):
        raise ValueError(f"optimizer must be 'scao' or 'adamw', got {c.optimizer!r}")
    if c.model == "auto":
        c.model = "small" if gpu else "tiny"
    if c.seq_len is None:
        c.seq_len = _PRESETS[c.model]().seq_len if c.model in _PRESETS else 256
    c.steps = c.steps if c.steps is not None else (1500 if gpu else 400)
    c.batch_size = c.batch_size or 16
    c.lr = c.lr if c.lr is not None else (1e-3 if gpu else 2e-3)
    c.warmup = c.warmup if c.warmup is not None else max(1, c.steps // 20)
    c.eval_every = c.eval_every or (100 if gpu else 50)
    c.ckpt_every = c.ckpt_every if c.ckpt_every is not None else (500 if gpu else 200)
    c.out = c.out or os.path.join("runs", c.optimizer)
    if c.dtype == "auto":
        c.dtype = "bf16" if (gpu and c.optimizer == "scao") else "fp32"
    if c.dtype not in ("bf16", "fp32"):
        raise ValueError(f"dtype must be auto, bf16 or fp32, got {c.dtype!r}")
    return c


# ------------------------------------------------------------------------ model and data
_PRESETS: dict[str, Callable[[], GPTConfig]] = {
    "tiny": GPTConfig.tiny,
    "small": GPTConfig.small,
    "large": GPTConfig.large,
}


def load_entry_point(spec: str) -> Callable:
    """``pkg.module:function`` or ``path/to/file.py:function`` -> the function."""
    mod_name, sep, attr = spec.partition(":")
    if not sep or not attr:
        raise ValueError(f"expected 'module:function' or 'file.py:function', got {spec!r}")
    if mod_name.endswith(".py"):
        s = importlib.util.spec_from_file_location(Path(mod_name).stem, mod_name)
        if s is None or s.loader is None:
            raise ImportError(f"cannot load {mod_name}")
        module = importlib.util.module_from_spec(s)
        s.loader.exec_module(module)
    else:
        module = importlib.import_module(mod_name)
    return getattr(module, attr)


def default_model(cfg: TrainConfig) -> nn.Module:
    """The embedded byte-level GPT at the preset size, with the run's sequence length."""
    gcfg = _PRESETS[cfg.model]()
    gcfg.seq_len = max(gcfg.seq_len, cfg.seq_len)
    return GPT(gcfg)


_CORPUS: dict[tuple, dict[str, ByteCorpus]] = {}


def stdlib_batch(split: str, index: int, cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows of the Python standard library's sources (read once per process)."""
    key = (cfg.max_bytes, cfg.seq_len, cfg.batch_size, cfg.seed)
    if key not in _CORPUS:
        train_bytes, val_bytes = stdlib_corpus(cfg.max_bytes)
        _CORPUS[key] = {
            "train": ByteCorpus(train_bytes, cfg.seq_len, cfg.batch_size, seed=cfg.seed),
            "val": ByteCorpus(val_bytes, cfg.seq_len, cfg.batch_size, seed=cfg.seed + 1),
        }
    return _CORPUS[key][split].batch(index)


# ---------------------------------------------------------------------------- optimizer
def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices (>= 2-D), none on norm gains and biases, as nanoGPT and HF do."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(cfg: TrainConfig, model: nn.Module, world_size: int) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)
    betas = tuple(cfg.betas)
    if cfg.optimizer == "adamw":
        fused = next(model.parameters()).is_cuda
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=betas, fused=fused or None)
    knobs = dict(cfg.scao)
    if world_size > 1:
        knobs.setdefault("grad_sync", "scao")  # SCAO averages the gradients itself: no DDP wrapper
    return SCAO(groups, lr=cfg.lr, betas=betas, **knobs)


def lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    """Linear warmup to 1, then cosine down to ``min_lr_frac`` at ``steps``."""

    def f(step: int) -> float:
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
        return cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


# ------------------------------------------------------------------------------ helpers
def setup_distributed(device_pref: str) -> tuple[int, int, torch.device]:
    """(rank, world_size, device); initialises the default group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device_pref == "auto" else device_pref == "cuda"
    if use_cuda:
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", device_id=device if use_cuda else None)
    return rank, world, device


def peak_memory_gib(device: torch.device) -> float:
    """Peak allocated GPU memory, or the process's peak resident set on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def mean_across_ranks(x: float, world: int, device: torch.device) -> float:
    if world == 1:
        return x
    t = torch.tensor([x], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t) / world


def save_atomic(obj: Any, path: str) -> None:
    """``torch.save`` to a temporary file next to ``path``, then rename over it (no torn checkpoints)."""
    tmp = f"{path}.tmp.{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def read_metrics(run_dir: str) -> list[dict[str, Any]]:
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def plot_runs(run_dirs: list[str], png: str) -> None:
    """Training loss (thin) and held-out loss (markers) against step, one colour per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for i, d in enumerate(run_dirs):
        rows = read_metrics(d)
        color = f"C{i}"
        name = os.path.basename(os.path.normpath(d))
        train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
        val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
        if train:
            ax.plot(*zip(*train), color=color, alpha=0.4, lw=1, label=f"{name} train")
        if val:
            ax.plot(*zip(*val), color=color, marker="o", lw=2, label=f"{name} held-out")
    ax.set_title("byte-level loss on the Python standard library")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/byte)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------- train
@torch.no_grad()
def evaluate(model: nn.Module, batch_fn: BatchFn, cfg: TrainConfig, rank: int, world: int, device, ctx) -> float:
    model.eval()
    total = 0.0
    for j in range(cfg.eval_batches):
        x, y = batch_fn("val", j * world + rank, cfg)
        with ctx():
            total += float(model(x.to(device), y.to(device)))
    model.train()
    return mean_across_ranks(total / cfg.eval_batches, world, device)


def train(model_fn: ModelFn | None = None, batch_fn: BatchFn | None = None, cfg: TrainConfig | None = None) -> dict:
    """Train ``model_fn(cfg)`` on ``batch_fn`` batches (defaults: the embedded GPT on the stdlib).

    Returns a summary: ``steps``, ``first_val``/``last_val`` (held-out loss), ``tokens``,
    ``seconds``, ``out``. Call it from every rank when running under torchrun.
    """
    rank, world, device = setup_distributed((cfg or TrainConfig()).device)
    cfg = resolve(cfg or TrainConfig(), device)
    if model_fn is None:
        model_fn = load_entry_point(cfg.model) if ":" in cfg.model else default_model
    if batch_fn is None:
        batch_fn = load_entry_point(cfg.data) if cfg.data != "stdlib" else stdlib_batch
    master = rank == 0
    ckpt_path = os.path.join(cfg.out, "ckpt.pt")
    metrics_path = os.path.join(cfg.out, "metrics.jsonl")

    torch.manual_seed(cfg.seed)  # same initial weights on every rank
    model = model_fn(cfg)
    dtype = torch.bfloat16 if cfg.dtype == "bf16" else torch.float32
    model.to(device=device, dtype=dtype)
    opt = build_optimizer(cfg, model, world)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))
    fwd_model: nn.Module = model
    if world > 1 and cfg.optimizer == "adamw":
        ids = [device.index] if device.type == "cuda" else None
        fwd_model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if device.type == "cuda" and dtype == torch.float32:
        ctx = lambda: torch.autocast("cuda", dtype=torch.bfloat16)  # noqa: E731
    else:
        ctx = _NullCtx

    start = 0
    if cfg.resume:
        path = ckpt_path if cfg.resume == "auto" else cfg.resume
        if os.path.exists(path):
            ck = torch.load(path, map_location=device, weights_only=True)
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            sched.load_state_dict(ck["scheduler"])
            start = int(ck["step"])
        elif cfg.resume != "auto":
            raise FileNotFoundError(f"--resume {path}: no such checkpoint")
    stop = min(cfg.steps, cfg.stop_at) if cfg.stop_at is not None else cfg.steps

    if master:
        os.makedirs(cfg.out, exist_ok=True)
        with open(os.path.join(cfg.out, "config.yaml"), "w") as fh:
            yaml.safe_dump(asdict(cfg), fh, sort_keys=False)
        kept = [r for r in read_metrics(cfg.out) if r["step"] <= start] if start else []
        with open(metrics_path, "w") as fh:  # a resumed run drops rows past its checkpoint
            fh.writelines(json.dumps(r) + "\n" for r in kept)
        n_params = sum(p.numel() for p in model.parameters())
        print(
            f"{cfg.optimizer} | {n_params / 1e6:.2f}M params | {world} rank(s) on {device.type} | {cfg.dtype} | "
            f"{cfg.steps} steps x {cfg.batch_size * cfg.grad_accum * world} seq x {cfg.seq_len} tok"
            + (f" | resumed at step {start}" if start else ""),
            flush=True,
        )

    def log(row: dict[str, Any]) -> None:
        if master:
            with open(metrics_path, "a") as fh:
                fh.write(json.dumps(row) + "\n")

    def checkpoint(step: int) -> None:
        state = {  # every rank builds it: SCAO's state_dict gathers its shards
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "step": step,
            "config": asdict(cfg),
        }
        if master:
            save_atomic(state, ckpt_path)
        if world > 1:
            dist.barrier()

    tokens_per_step = cfg.batch_size * cfg.seq_len * cfg.grad_accum * world
    earlier = [r["val_loss"] for r in read_metrics(cfg.out) if "val_loss" in r] if start else []
    first_val = earlier[0] if earlier else None  # a resumed run reports the first evaluation of the run
    last_val = earlier[-1] if earlier else None
    bar = tqdm(total=cfg.steps, initial=start, disable=not (master and cfg.progress), dynamic_ncols=True)
    t_start = t_log = time.perf_counter()
    tokens_since = 0
    loss_val = float("nan")
    step = start
    for step in range(start, stop):
        if step % cfg.eval_every == 0:
            last_val = evaluate(fwd_model, batch_fn, cfg, rank, world, device, ctx)
            first_val = last_val if first_val is None else first_val
            log({"step": step, "val_loss": last_val})
            if master and cfg.progress:
                bar.write(f"step {step}: held-out loss {last_val:.4f}")
        loss_sum = 0.0
        for micro in range(cfg.grad_accum):
            x, y = batch_fn("train", (step * cfg.grad_accum + micro) * world + rank, cfg)
            sync_now = micro == cfg.grad_accum - 1 or not isinstance(fwd_model, nn.parallel.DistributedDataParallel)
            with ctx(), _NullCtx() if sync_now else fwd_model.no_sync():
                loss = fwd_model(x.to(device), y.to(device))
                (loss / cfg.grad_accum).backward()
            loss_sum += float(loss.detach()) / cfg.grad_accum
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        tokens_since += tokens_per_step
        done = step + 1
        if done % cfg.log_every == 0 or done == stop:
            loss_val = mean_across_ranks(loss_sum, world, device)
            now = time.perf_counter()
            row = {
                "step": done,
                "loss": loss_val,
                "lr": sched.get_last_lr()[0],
                "tok_per_s": tokens_since / max(now - t_log, 1e-9),
                "mem_gib": peak_memory_gib(device),
                "elapsed_s": now - t_start,
            }
            log(row)
            t_log, tokens_since = now, 0
            bar.set_postfix(
                loss=f"{loss_val:.3f}", lr=f"{row['lr']:.2e}", tok_s=f"{row['tok_per_s']:.3g}",
                mem=f"{row['mem_gib']:.2f}GiB", refresh=False,
            )  # fmt: skip
        bar.update(1)
        if done == stop or (cfg.ckpt_every and done % cfg.ckpt_every == 0):
            checkpoint(done)
    bar.close()
    step = stop
    if step == cfg.steps and (start < stop or last_val is None):
        last_val = evaluate(fwd_model, batch_fn, cfg, rank, world, device, ctx)
        first_val = last_val if first_val is None else first_val
        log({"step": step, "val_loss": last_val})
    seconds = time.perf_counter() - t_start
    summary = {
        "steps": step,
        "first_val": first_val,
        "last_val": last_val,
        "tokens": (stop - start) * tokens_per_step,
        "seconds": seconds,
        "out": cfg.out,
    }
    if master:
        if cfg.plot:
            plot_runs([cfg.out, *cfg.compare], os.path.join(cfg.out, "loss.png"))
        if cfg.optimizer == "scao":
            rep = memory_report(opt)
            print(f"SCAO state on rank 0: {rep.total / 2**20:.1f} MiB, {rep.bytes_per_param:.2f} B/param", flush=True)
        first = f"{first_val:.4f}" if first_val is not None else "n/a"
        last = f"{last_val:.4f}" if last_val is not None else "n/a"
        print(
            f"done: {cfg.optimizer}, {step} steps, {summary['tokens'] / 1e6:.2f}M tokens in {seconds:.0f} s "
            f"({summary['tokens'] / max(seconds, 1e-9):,.0f} tok/s); held-out loss {first} -> {last}; "
            f"outputs in {cfg.out}/",
            flush=True,
        )
    return summary


class _NullCtx:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def main(argv: list[str] | None = None) -> dict:
    cfg = load_config(argv)
    with closing_process_group():  # barrier, then destroy: no rank leaves while another still needs the group
        return train(cfg=cfg)


if __name__ == "__main__":
    # denormal moments slow CPU AdamW down ~10x after a few hundred steps; set for the script only,
    # since the flag is process-wide and would change the float semantics of a program calling train()
    if not torch.cuda.is_available():
        torch.set_flush_denormal(True)
    main(sys.argv[1:])
