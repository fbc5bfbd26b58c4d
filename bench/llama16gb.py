"""A TinyLlama-shaped 1.1B model full-fine-tuned under a 16 GiB cap: SCAO's memory-budget mode vs AdamW.

    python -m bench.llama16gb --out runs/llama16gb             # GPU (H100/H200), about 3-5 minutes
    python -m bench.llama16gb --tiny --cpu --out /tmp/l16      # a very small Llama on CPU, no cap (CI)

Setting (issue 6): ``transformers.LlamaConfig(hidden_size=2048, intermediate_size=5632,
num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4, vocab_size=32000)``, random
init, gradient checkpointing, batch 1 x 512, the process capped at ``--cap-gib`` (16) GiB with
``torch.cuda.set_per_process_memory_fraction``. The tokens are the bytes of the Python standard
library's sources (ids 0-255 of the vocabulary; no tokenizer or download), so the loss falls fast
from ln(32000) = 10.4 and "decreasing" is visible within the run.

Cases (``--cases``, in this order by default):

* ``scao_16gb`` — ``scao_dist.presets.for_memory_budget(model, budget_gb=16)`` on bf16 weights: the
  settings it picks, its byte plan, and how many blocks are Kron-preconditioned (bases built);
* ``scao_lean`` — the preset's leanest setting (``LADDER[-1]``), for the low end of SCAO's memory;
* ``adamw_fp32`` — AdamW with fp32 master weights (bf16 autocast): 16 B/param, expected to OOM;
* ``adamw_bf16`` — AdamW directly on bf16 weights (no master copy);
* ``lora_int4`` — LoRA rank 16 (peft) on q/k/v/o/gate/up/down over a frozen **4-bit base**, trained
  with SCAO. The base is this file's own int4 weight-only quantization (:class:`Int4Linear`:
  asymmetric, groups of 64 along the input dim, bf16 scale and offset, two weights per byte:
  0.56 B/param), dequantized to bf16 for each matmul — not bitsandbytes NF4 or torchao, which the
  GPU image does not have (bitsandbytes' wheel is > 40 MB). Must stay finite from step 1.

Per case: status (ok / OOM / error), peak GiB (``max_memory_allocated``: weights, optimizer, activations,
everything), ms/step (median after 3 warm-up steps, synchronised), first and last losses (means of 3),
whether every loss was finite. One JSON (``--out``/llama16gb.json); the Markdown table is printed last.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from scao_dist import SCAO, memory_report
from scao_dist.demo import ByteCorpus, stdlib_corpus
from scao_dist.presets import LADDER, for_memory_budget

GIB = 2**30
FULL = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
            num_key_value_heads=4, vocab_size=32000)  # fmt: skip
TINY = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=512)  # fmt: skip
CASES = ("scao_16gb", "scao_lean", "adamw_fp32", "adamw_bf16", "lora_int4")
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# ---------------------------------------------------------------------------------- int4 base
class Int4Linear(nn.Linear):
    """A frozen ``nn.Linear`` stored in 4 bits: ``w = q * scale + offset`` per group of 64 inputs.

    ``weight`` holds the packed codes (uint8, two per byte, frozen) so that code which looks at
    ``layer.weight`` (peft, device moves) sees a non-float tensor and leaves it alone; ``scale`` and
    ``offset`` are bf16 ``(out, in / 64)`` buffers. The forward dequantizes the whole matrix to bf16
    and runs one matmul (no fused int4 kernel: memory, not speed, is what this run measures).
    """

    GROUP = 64

    def __init__(self, in_features: int, out_features: int, device: Any = None) -> None:
        nn.Module.__init__(self)
        if in_features % self.GROUP:
            raise ValueError(f"in_features {in_features} is not a multiple of {self.GROUP}")
        self.in_features, self.out_features = in_features, out_features
        codes = torch.zeros(out_features, in_features // 2, dtype=torch.uint8, device=device)
        self.weight = nn.Parameter(codes, requires_grad=False)
        groups = in_features // self.GROUP
        self.register_buffer("scale", torch.zeros(out_features, groups, dtype=torch.bfloat16, device=device))
        self.register_buffer("offset", torch.zeros(out_features, groups, dtype=torch.bfloat16, device=device))
        self.bias = None

    @classmethod
    @torch.no_grad()
    def from_linear(cls, lin: nn.Linear) -> Int4Linear:
        q = cls(lin.in_features, lin.out_features, device=lin.weight.device)
        w = lin.weight.float().view(lin.out_features, -1, cls.GROUP)
        lo, hi = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
        scale = ((hi - lo) / 15).clamp_min(1e-8)
        codes = ((w - lo) / scale).round_().clamp_(0, 15).to(torch.uint8).view(lin.out_features, -1)
        q.weight.copy_(codes[:, 0::2] | (codes[:, 1::2] << 4))
        q.scale.copy_(scale.squeeze(-1))
        q.offset.copy_(lo.squeeze(-1))
        return q

    def dequantize(self) -> Tensor:
        c = self.weight
        codes = torch.stack([c & 15, c >> 4], dim=-1).view(self.out_features, -1, self.GROUP)
        w = codes.to(torch.bfloat16) * self.scale.unsqueeze(-1) + self.offset.unsqueeze(-1)
        return w.view(self.out_features, self.in_features)

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(x.to(torch.bfloat16), self.dequantize())

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bits=4, group={self.GROUP}"


def quantize_int4_(model: nn.Module, skip: tuple[str, ...] = ("lm_head",)) -> int:
    """Replace every ``nn.Linear`` (but ``skip``) by an :class:`Int4Linear`, in place; returns how many."""
    n = 0
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if type(child) is nn.Linear and not any(s in full for s in skip):
                setattr(module, child_name, Int4Linear.from_linear(child))
                n += 1
    return n


# ---------------------------------------------------------------------------------- the runs
def build_model(arch: dict[str, int], device: torch.device, dtype: torch.dtype, seq_len: int) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**arch, max_position_embeddings=max(seq_len, 2048))
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(dtype)
    model.config.use_cache = False
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.train()
    return model


def kron_blocks(opt: SCAO) -> tuple[int, int]:
    """(blocks preconditioned in a Kronecker eigenbasis with their bases built, all blocks)."""
    ready = sum(sum(getattr(g, "ready", [])) for g in opt.groups if hasattr(g, "sides"))
    return int(ready), len(opt.specs)


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or (
        isinstance(err, RuntimeError) and ("out of memory" in str(err) or "ALLOC_FAILED" in str(err))
    )


def run_case(name: str, setup: Callable[[], tuple[nn.Module, Any, dict]], batches: Callable[[int], tuple],
             steps: int, device: torch.device) -> dict[str, Any]:  # fmt: skip
    """Build with ``setup()`` -> (model, optimizer, info), train ``steps``; OOM anywhere becomes status "OOM"."""
    row: dict[str, Any] = {"case": name, "status": "ok"}
    cuda = device.type == "cuda"
    if cuda:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    losses: list[float] = []
    times: list[float] = []

    def train() -> None:  # its locals (model, graph, optimizer) are gone once it returns or raises
        model, opt, info = setup()
        row.update(info)
        autocast = info.get("autocast", False) and cuda
        for step in range(steps):
            x, y = batches(step)
            if cuda:
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
                loss = model(input_ids=x, labels=y).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if cuda:
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t0)
            losses.append(float(loss.detach()))
        if isinstance(opt, SCAO):
            row["kron_blocks"], row["blocks"] = kron_blocks(opt)
            row["refreshes"] = int(opt.counters["refreshes"])
            row["opt_state_gib"] = memory_report(opt).total / GIB

    try:
        train()
    except Exception as err:  # an OOM is a result; any other failure must not hide the other cases
        if _is_oom(err):
            row.update(status="OOM", error=str(err).splitlines()[0][:200])
        else:
            row.update(status="error", error=f"{type(err).__name__}: {err}"[:400])
            traceback.print_exc()
    if cuda:
        row["peak_gib"] = torch.cuda.max_memory_allocated(device) / GIB
    row["steps_done"] = len(losses)
    if losses:
        k = min(3, len(losses))
        row["loss_first"], row["loss_last"] = sum(losses[:k]) / k, sum(losses[-k:]) / k
        row["finite"] = all(math.isfinite(v) for v in losses)
        row["losses"] = losses
    if len(times) > 3:
        row["ms_per_step"] = 1000 * statistics.median(times[3:])
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return row


def make_setups(args: argparse.Namespace, arch: dict[str, int], device: torch.device) -> dict[str, Callable]:
    bf16 = torch.bfloat16

    def scao_budget():
        model = build_model(arch, device, bf16, args.seq_len)
        opt = for_memory_budget(model, budget_gb=args.budget_gib, lr=args.lr, reserve_gb=args.reserve_gib,
                                strict=False)  # fmt: skip
        plan = opt.memory_plan
        return model, opt, {"settings": plan.settings, "plan_gib": (plan.total + plan.reserve) / GIB,
                            "plan": plan.table()}  # fmt: skip

    def scao_lean():
        model = build_model(arch, device, bf16, args.seq_len)
        groups = [{"params": [p for p in model.parameters() if p.ndim >= 2]},
                  {"params": [p for p in model.parameters() if p.ndim < 2], "weight_decay": 0.0}]  # fmt: skip
        return model, SCAO(groups, lr=args.lr, **LADDER[-1]), {"settings": dict(LADDER[-1])}

    def adamw_fp32():
        model = build_model(arch, device, torch.float32, args.seq_len)
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr, fused=device.type == "cuda")
        return model, opt, {"autocast": True, "settings": {"master": "fp32", "autocast": "bf16"}}

    def adamw_bf16():
        model = build_model(arch, device, bf16, args.seq_len)
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr, fused=device.type == "cuda")
        return model, opt, {"settings": {"weights": "bf16", "master": "none"}}

    def lora_int4():
        from peft import LoraConfig, get_peft_model

        model = build_model(arch, device, bf16, args.seq_len)
        n_quant = quantize_int4_(model)
        torch.manual_seed(1)
        cfg = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=LORA_TARGETS, bias="none")
        model = get_peft_model(model, cfg)
        trainable = [p for p in model.parameters() if p.requires_grad]
        opt = SCAO(trainable, lr=args.lora_lr, weight_decay=0.0)
        info = {
            "settings": {"base": "int4 (Int4Linear, group 64)", "lora_rank": 16, "optimizer": "SCAO"},
            "quantized_linears": n_quant,
            "trainable_params": sum(p.numel() for p in trainable),
            "lora_dtype": str(trainable[0].dtype),
        }
        return model, opt, info

    return {"scao_16gb": scao_budget, "scao_lean": scao_lean, "adamw_fp32": adamw_fp32,
            "adamw_bf16": adamw_bf16, "lora_int4": lora_int4}  # fmt: skip


def markdown(rows: list[dict[str, Any]], cap: float | None) -> str:
    head = "| case | status | peak GiB | ms/step | loss first → last | finite | Kron blocks | settings |"
    lines = [f"TinyLlama-shaped run, cap {cap:g} GiB" if cap else "run without a memory cap", "", head,
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        peak = f"{r['peak_gib']:.2f}" if "peak_gib" in r else "—"
        ms = f"{r['ms_per_step']:.0f}" if "ms_per_step" in r else "—"
        loss = f"{r['loss_first']:.3f} → {r['loss_last']:.3f}" if "loss_first" in r else "—"
        kron = f"{r['kron_blocks']}/{r['blocks']}" if "kron_blocks" in r else "—"
        fin = {True: "yes", False: "NO"}.get(r.get("finite"), "—")
        settings = json.dumps(r.get("settings", {})).replace("|", "/")
        lines.append(f"| {r['case']} | {r['status']} | {peak} | {ms} | {loss} | {fin} | {kron} | {settings} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="directory for llama16gb.json")
    p.add_argument("--tiny", action="store_true", help="a very small Llama (for CPU tests)")
    p.add_argument("--cpu", action="store_true", help="run on CPU (no memory cap)")
    p.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of " + ",".join(CASES))
    p.add_argument("--steps", type=int, default=None, help="steps per case (40; tiny: 6)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (512; tiny: 64)")
    p.add_argument("--cap-gib", type=float, default=16.0, help="per-process GPU memory cap")
    p.add_argument("--budget-gib", type=float, default=None, help="budget for the preset (= cap; tiny: 0.02)")
    p.add_argument("--reserve-gib", type=float, default=None, help="the preset's reserve for activations (tiny: 0)")
    p.add_argument("--lr", type=float, default=None, help="peak lr of the full fine-tunes (3e-4; tiny: 1e-3)")
    p.add_argument("--lora-lr", type=float, default=1e-3)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    device = torch.device("cpu" if args.cpu or not torch.cuda.is_available() else "cuda")
    arch = TINY if args.tiny else FULL
    args.steps = args.steps or (6 if args.tiny else 40)
    args.lr = args.lr or (1e-3 if args.tiny else 3e-4)
    args.seq_len = args.seq_len or (64 if args.tiny else 512)
    args.budget_gib = args.budget_gib or (0.02 if args.tiny else args.cap_gib)
    if args.reserve_gib is None and args.tiny:
        args.reserve_gib = 0.0
    cap = None
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.cap_gib * GIB / total), torch.cuda.current_device())
        cap = args.cap_gib
    train, _ = stdlib_corpus(max_bytes=4_000_000 if args.tiny else 40_000_000)
    corpus = ByteCorpus(train, args.seq_len, 1, seed=0)

    def batches(step: int) -> tuple[Tensor, Tensor]:
        x, _ = corpus.batch(step, device)
        return x, x  # labels = inputs: the model shifts them itself

    setups = make_setups(args, arch, device)
    names = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = sorted(set(names) - set(setups))
    if unknown:
        raise SystemExit(f"unknown cases {unknown}; known: {list(setups)}")
    rows = []
    t0 = time.time()
    for name in names:
        row = run_case(name, setups[name], batches, args.steps, device)
        rows.append(row)
        brief = {k: v for k, v in row.items() if k not in ("losses", "plan")}
        print(json.dumps(brief), flush=True)
        if "plan" in row:
            print(row["plan"], flush=True)
    os.makedirs(args.out, exist_ok=True)
    meta = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "cap_gib": cap,
        "arch": arch,
        "batch": [1, args.seq_len],
        "steps": args.steps,
        "seconds": time.time() - t0,
    }
    with open(os.path.join(args.out, "llama16gb.json"), "w") as fh:
        json.dump({"meta": meta, "cases": rows}, fh, indent=1)
    print(markdown(rows, cap), flush=True)
    return rows


if __name__ == "__main__":
    if not torch.cuda.is_available():  # process-wide, so only when run as a script (slow denormals on CPU)
        torch.set_flush_denormal(True)
    main()
