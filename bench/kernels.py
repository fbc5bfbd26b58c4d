"""Achieved memory bandwidth of the fused step kernels (scao_dist/kernels) on one GPU.

    python -m bench.kernels --out $OUT/kernels.json                 # CUDA (H100/H200)
    TRITON_INTERPRET=1 python -m bench.kernels --dry-run --out x.json  # CPU smoke test, tiny sizes

1. Correctness first, on the device: every kernel against its plain-torch twin on fresh random
   operands (odd small shapes and a few large ones), outputs poisoned before the run
   (:mod:`scao_dist.kernels.verify`; integer and bf16 outputs bit for bit, fp32 within 2-4 ulp).
2. The device-to-device copy bandwidth of this GPU in this run (``dst.copy_(src)``, 2 bytes moved per
   byte copied), the reference the kernels are measured against.
3. Each memory-bound kernel at a few hundred MB per call, inputs rotated between two sets:
   ``triton.testing.do_bench`` median time, bytes = every operand read once + every output written
   once (what a perfect fused kernel must move), achieved GB/s and its fraction of the copy
   bandwidth (goal: >= 70%), and the median time of the torch twin on the same operands.

Prints a Markdown table and writes everything (device, versions, verification, timings) as JSON to
``--out``. Exit status 1 when verification found a mismatch (the JSON is written first).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from bench import knobs

# what each kernel reads and writes (keyword names); "returned" = its fp32 result, written once
READS = {
    "ema_signed_": ("codes", "scales", "x"),
    "rotated_adam_": ("codes", "scales", "g", "m"),
    "apply_update_": ("w", "rho", "u"),
    "factor_ema_corr_": ("codes", "diag", "outer"),
    "adamw_": ("w", "rho", "g", "m_codes", "m_scales", "v_codes", "v_scales"),
    "residual_sumsq": ("g", "x", "y"),  # + the per-tile partial sums (1/64 of g): not counted
    "residual_stats": ("g", "x", "y"),  # as residual_sumsq; the O(m + n) statistics: not counted
    "complement_update": ("m", "xu", "yu", "xm", "ym", "w", "rho"),  # + O(m + n) per block: not counted
    "finite_gather": ("checks", "copies"),  # every checked tensor and copied block read once
}
WRITES = {
    "ema_signed_": ("codes", "scales", "returned"),
    "rotated_adam_": ("codes", "scales", "returned"),
    "apply_update_": ("w", "rho"),
    "factor_ema_corr_": ("codes", "diag"),
    "adamw_": ("w", "rho", "m_codes", "m_scales", "v_codes", "v_scales"),
    "residual_sumsq": (),
    "residual_stats": (),
    "complement_update": ("returned", "w", "rho"),  # U returned, or applied to the weights (and bits)
    "finite_gather": ("copies",),  # each copied block written once
}
EXTRA = ("finite_gather",)
"""Kernels timed and verified here that ``verify.KERNELS`` (the twin-comparison suite of ``Case``s) leaves out:
the step's NaN/inf check with the gradients' copies, checked by ``verify.finite_gather_errors``."""
CHECKS = ("division",)
"""Checks run with the verification, not timed: the codecs' divisions and square root (``verify.division_errors``:
the per-group division, the companding's over every fp32 in [-1, 1], the square root over every fp32 in [0, inf])."""


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="path of the JSON results")
    ap.add_argument("--mb", type=float, default=400.0, help="bytes moved per kernel call, in MB (default 400)")
    ap.add_argument("--sets", type=int, default=2, help="input sets rotated between calls (default 2)")
    ap.add_argument("--warmup", type=int, default=25, help="do_bench warmup, ms")
    ap.add_argument("--rep", type=int, default=200, help="do_bench repetition time, ms")
    ap.add_argument("--sweep", action="store_true", help="also time other block sizes / num_warps per kernel")
    ap.add_argument(
        "--grid", default="", help='JSON list of settings that --sweep tries instead of its own grid, e.g. '
        '\'[{"moments.DECODE_LUT": false}, {"lowrank.BM": 128, "num_stages": 3}]\'',
    )  # fmt: skip
    ap.add_argument("--only", default="", help="comma-separated kernels: verify and time these alone")
    ap.add_argument("--match", default="", help="time only the cases whose variant label contains this text")
    ap.add_argument("--dry-run", action="store_true", help="CPU + Triton interpreter, tiny sizes, wall-clock timer")
    knobs.add_argument(ap)
    return ap.parse_args(argv)


# ------------------------------------------------------------------------------ operands
def shapes(dry: bool, mb: float) -> list[tuple[str, str, dict[str, Any]]]:
    """(kernel, variant, spec) of each timed case; a spec fixes the stacked-block shape.

    The batch of stacked blocks is chosen so one call moves about ``mb`` MB (bytes per element in
    brackets): moments on (B, 768, 3072) blocks [10.1 / 14.1], apply on the same [10 / 12 / 12],
    factors (B, 768, 768) and (B, 2048, 2048) [6: int8 codes read and written, fp32 outer read; the
    fp32 diagonal, read and written, adds 8/d], the 1-D AdamW path as B rows of 768 (many small params) [14.3],
    the low-rank kernels on (B, 3072, 768) blocks with rank 128 (the 43M GPT's MLP) and (B, 2048, 8192)
    with rank 144 (the 405M GPT's; ``residual_sumsq`` [4: G read], ``complement_update`` [8: M read, U
    written; 10 applied: M, bf16 weights and int8 bits read, weights and bits written]; the factors add
    (m + n) k x 4 per block). Their products run in TF32, as the training benchmarks set torch's fp32
    matmuls to. The "bf16" cases read a bf16 gradient, as frame-less groups with bf16 weights pass it
    [``ema_signed_`` 8.1, ``residual_sumsq`` 2]. The "bf16 Q_R" cases pass the right factor as the step
    does with bf16 stream bases: the stored bf16 basis (its first k columns, read in place), shared by both
    products of the complement, whose M is then bf16 as well [``complement_update`` applied 8; the
    ``ema_signed_`` that returns that M: 6.1].
    """
    import torch

    if dry:
        return [
            ("ema_signed_", "3-D", dict(shape=(2, 5, 70))),
            ("rotated_adam_", "bc per block", dict(shape=(2, 5, 70), bc="tensor")),
            ("apply_update_", "bf16+int8", dict(shape=(2, 5, 70), wdtype="bf16", bits=8)),
            ("apply_update_", "fp32", dict(shape=(2, 5, 70), wdtype="fp32", bits=0)),
            ("factor_ema_corr_", "d=24", dict(batch=2, d=24)),
            ("adamw_", "bf16+int8", dict(shape=(9, 40), wdtype="bf16", bits=8)),
            ("residual_sumsq", "k=7", dict(shape=(3, 5, 70), k=7)),
            ("residual_stats", "k=7 bf16 G", dict(shape=(3, 5, 70), k=7, gdtype=torch.bfloat16)),
            ("complement_update", "k=7 bc per block", dict(shape=(3, 5, 70), k=7, bc="tensor")),
            ("complement_update", "k=7 applied", dict(shape=(3, 5, 70), k=7, apply=True)),
            ("finite_gather", "buffers + column blocks", dict(shape=(2, 40, 64), parents=2)),
        ]
    blk = 768 * 3072
    per = mb * 1e6

    def b(bytes_per_elem: float, elems: int) -> int:
        return max(1, round(per / bytes_per_elem / elems))

    return [
        ("ema_signed_", "(B,768,3072)", dict(shape=(b(10.125, blk), 768, 3072))),
        ("ema_signed_", "(B,767,3071) odd", dict(shape=(b(10.125, blk), 767, 3071))),
        ("ema_signed_", "(B,767,3071) odd, bf16 x", dict(shape=(b(8.125, blk), 767, 3071), gdtype=torch.bfloat16)),
        ("ema_signed_", "(B,2048,4096) bf16 x", dict(shape=(b(8.125, 2048 * 4096), 2048, 4096), gdtype=torch.bfloat16)),
        (
            "ema_signed_",
            "(B,2048,4096) bf16 x, bf16 out",
            dict(shape=(b(6.125, 2048 * 4096), 2048, 4096), gdtype=torch.bfloat16, out_dtype=torch.bfloat16),
        ),
        ("rotated_adam_", "(B,768,3072) bc per block", dict(shape=(b(14.125, blk), 768, 3072), bc="tensor")),
        ("rotated_adam_", "(B,768,3056) n%32=16", dict(shape=(b(14.125, blk), 768, 3056))),
        ("apply_update_", "bf16+int8", dict(shape=(b(10, blk), 768, 3072), wdtype="bf16", bits=8)),
        ("apply_update_", "bf16+int16", dict(shape=(b(12, blk), 768, 3072), wdtype="bf16", bits=16)),
        ("apply_update_", "fp32", dict(shape=(b(12, blk), 768, 3072), wdtype="fp32", bits=0)),
        ("factor_ema_corr_", "(B,768,768)", dict(batch=b(6, 768 * 768), d=768)),
        ("factor_ema_corr_", "(B,2048,2048)", dict(batch=b(6, 2048 * 2048), d=2048)),
        ("adamw_", "bf16+int8 (B,768)", dict(shape=(b(14.25, 768), 768), wdtype="bf16", bits=8)),
        ("adamw_", "fp32 (B,768)", dict(shape=(b(16.25, 768), 768), wdtype="fp32", bits=0)),
        ("residual_sumsq", "(B,3072,768) k=128", dict(shape=(b(4, blk), 3072, 768), k=128)),
        ("residual_sumsq", "(B,2048,8192) k=144", dict(shape=(b(4, 2048 * 8192), 2048, 8192), k=144)),
        (
            "residual_sumsq",
            "(B,2048,8192) k=144 bf16 G",
            dict(shape=(b(2, 2048 * 8192), 2048, 8192), k=144, gdtype=torch.bfloat16),
        ),
        (  # what the 405M step calls: the sums of residual_sumsq, then the statistics of one program per block
            "residual_stats",
            "(B,2048,8192) k=144 bf16 G",
            dict(shape=(b(2, 2048 * 8192), 2048, 8192), k=144, gdtype=torch.bfloat16),
        ),
        (
            "residual_stats",
            "(B,2048,8192) k=144 bf16 G, bf16 Q_R",
            dict(shape=(b(2, 2048 * 8192), 2048, 8192), k=144, gdtype=torch.bfloat16, basis="bf16"),
        ),
        ("residual_sumsq", "(B,3072,768) k=16", dict(shape=(b(4, blk), 3072, 768), k=16)),  # the products' share
        ("residual_sumsq", "(B,3072,768) G alone", dict(shape=(b(4, blk), 3072, 768), k=0)),  # and the tile's
        ("complement_update", "(B,3072,768) k=128", dict(shape=(b(8, blk), 3072, 768), k=128)),
        ("complement_update", "(B,3072,768) k=16", dict(shape=(b(8, blk), 3072, 768), k=16)),
        (
            "complement_update",
            "(B,2048,8192) k=144 bc per block",
            dict(shape=(b(8, 2048 * 8192), 2048, 8192), k=144, bc="tensor"),
        ),
        (  # as the step runs it: applied to bf16 weights and their int8 bits
            "complement_update",
            "(B,2048,8192) k=144 applied bf16+int8",
            dict(shape=(b(10, 2048 * 8192), 2048, 8192), k=144, bc="tensor", apply=True),
        ),
        (  # ... with bf16 stream bases: Q_R read as stored, once for both products, and a bf16 M
            "complement_update",
            "(B,2048,8192) k=144 applied, bf16 Q_R, bf16 M",
            dict(shape=(b(8, 2048 * 8192), 2048, 8192), k=144, bc="tensor", apply=True, basis="bf16"),
        ),
        (  # ... and the update's factor X_u in bf16 (KronGroup.u_dtype): one exact product for U, not two
            "complement_update",
            "(B,2048,8192) k=144 applied, bf16 Q_R, bf16 M, bf16 X_u",
            dict(shape=(b(8, 2048 * 8192), 2048, 8192), k=144, bc="tensor", apply=True, basis="bf16", xu="bf16"),
        ),
        (  # ... and M's factor X_m in bf16 too (KronGroup.p_dtype): two exact bf16 products per tile, the step's
            "complement_update",
            "(B,2048,8192) k=144 applied, bf16 Q_R, bf16 M, bf16 X_u, bf16 X_m",
            dict(
                shape=(b(8, 2048 * 8192), 2048, 8192),
                k=144,
                bc="tensor",
                apply=True,
                basis="bf16",
                xu="bf16",
                xm="bf16",
            ),
        ),
        (  # the residual's factor X_g in bf16 against the bf16 basis (KronGroup.p_dtype): the step's
            "residual_stats",
            "(B,2048,8192) k=144 bf16 G, bf16 Q_R, bf16 X_g",
            dict(shape=(b(2, 2048 * 8192), 2048, 8192), k=144, gdtype=torch.bfloat16, basis="bf16", x="bf16"),
        ),
        (  # the 405M step's check: its gradient buffers read in place, 2048 x 8192 weights' column blocks copied
            "finite_gather",
            "bf16 (B,4096,2048) buffer + column blocks of (P,2048,8192)",
            dict(shape=(b(3, 4096 * 2048), 4096, 2048), parents=max(1, b(6, 2048 * 8192))),
        ),
    ]


def make_operands(kernel: str, spec: dict[str, Any], device: Any) -> dict[str, Any]:
    """Realistic random operands generated on the device (valid packed states, finite values)."""
    import torch

    from scao_dist import quant

    def rnd(*s: int) -> torch.Tensor:
        return torch.randn(*s, device=device) * 1e-3

    if kernel == "finite_gather":  # bf16 gradients: one stacked buffer checked, wider weights' column blocks copied
        parents = [rnd(spec["shape"][1] // 2, spec["shape"][2] * 4).bfloat16() for _ in range(spec["parents"])]
        half = parents[0].shape[1] // 2
        copies = [(q[:, a : a + half], torch.empty(q.shape[0], half, dtype=q.dtype, device=device))
                  for q in parents for a in (0, half)]  # fmt: skip
        return dict(checks=[rnd(*spec["shape"]).bfloat16()], copies=copies)
    if kernel == "factor_ema_corr_":
        B, d = spec["batch"], spec["d"]
        a = torch.randn(B, d, 8, device=device)
        codes, diag = quant.encode_corr(a @ a.mT, 1)
        a = torch.randn(B, d, 8, device=device)
        outer = a @ a.mT
        seed = torch.arange(B, device=device, dtype=torch.int64)
        return dict(codes=codes, diag=diag, outer=outer, beta=0.95, seed=seed)
    shape = spec["shape"]
    if kernel in ("residual_sumsq", "residual_stats", "complement_update"):  # all blocks truncated, a 1e-3 gradient
        B, M, N = shape
        k = spec["k"]
        x, y = rnd(B, M, k) * 30, rnd(B, N, k) * 30
        bf16_basis = spec.get("basis") == "bf16"
        if bf16_basis:  # the first k columns of a stored (B, N, k + probes) bf16 basis
            stored = torch.zeros(B, N, k + 16, dtype=torch.bfloat16, device=device)
            stored[..., :k] = y
            y = stored[..., :k]
        if spec.get("x") == "bf16":  # the residual's factor as the step passes it (KronGroup.p_dtype)
            x = x.to(torch.bfloat16)
        g = rnd(*shape).to(spec.get("gdtype", torch.float32))
        if kernel == "residual_sumsq":  # k = 0: the sums of G alone (no product in the kernel)
            return dict(g=g, x=x if k else None, y=y if k else None)
        if kernel == "residual_stats":
            rows = dict(g_row=rnd(B, M).square(), res_row=rnd(B, M).square())
            cols = dict(g_col=rnd(B, N).square(), res_col=rnd(B, N).square())
            mask = torch.ones(B, dtype=torch.bool, device=device)  # every block truncated, as at 405M
            return dict(g=g, x=x, y=y, **rows, **cols, mask=mask, beta2=0.95, every=True)
        bc1: Any = 0.5
        bc2: Any = 0.3
        if spec.get("bc") == "tensor":
            bc1 = 0.5 + torch.rand(B, 1, 1, device=device)
            bc2 = 0.1 + torch.rand(B, 1, 1, device=device)
        mask = torch.ones(B, dtype=torch.bool, device=device)
        if spec.get("apply"):
            w, rho = quant.split_master(torch.randn(*shape, device=device), 8)
            apply = dict(w=w, rho=rho, lr=1e-3, wd=0.01)
        else:
            apply = {}
        row, col, g_row = rnd(B, M).square(), rnd(B, N).square(), rnd(B, M).square()
        m = rnd(*shape).to(torch.bfloat16 if bf16_basis else torch.float32)
        xu = x.to(torch.bfloat16) if spec.get("xu") == "bf16" else x  # the update's factor as the step passes it
        xm = rnd(B, M, k) * 30
        xm = xm.to(torch.bfloat16) if spec.get("xm") == "bf16" else xm  # M's factor as the step passes it
        return dict(m=m, xu=xu, yu=y, xm=xm, ym=y, row=row, col=col, g_row=g_row,
                    mask=mask, bc1=bc1, bc2=bc2, eps=1e-8, **apply)  # fmt: skip
    if kernel == "ema_signed_":
        codes, scales = quant.encode_signed(rnd(*shape))
        x = rnd(*shape).to(spec.get("gdtype", torch.float32))
        return dict(codes=codes, scales=scales, x=x, beta=0.9, out_dtype=spec.get("out_dtype", torch.float32))
    if kernel == "rotated_adam_":
        codes, scales = quant.encode_sqrt(rnd(*shape).square())
        bc: Any = 0.7
        if spec.get("bc") == "tensor":  # one bias correction per stacked block, as groups.py passes them
            bc = 0.5 + torch.rand(shape[0], *([1] * (len(shape) - 1)), device=device)
        return dict(codes=codes, scales=scales, g=rnd(*shape), m=rnd(*shape), beta2=0.999, bc1=bc, bc2=bc, eps=1e-8)
    x = torch.randn(*shape, device=device)
    if spec["wdtype"] == "fp32":
        w, rho = x, None
    else:
        w, rho = quant.split_master(x, spec["bits"])
    if kernel == "apply_update_":
        return dict(w=w, rho=rho, u=rnd(*shape), lr=1e-3, wd=0.01)
    mc, ms = quant.encode_signed(rnd(*shape))
    vc, vs = quant.encode_sqrt(rnd(*shape).square())
    return dict(w=w, rho=rho, g=rnd(*shape), m_codes=mc, m_scales=ms, v_codes=vc, v_scales=vs,
                lr=1e-3, beta1=0.9, beta2=0.999, bc1=0.5, bc2=0.3, eps=1e-8, wd=0.01)  # fmt: skip


def moved_bytes(kernel: str, ops: dict[str, Any]) -> int:
    """Bytes a perfect fused kernel moves: each operand read once, each output written once."""
    import torch

    def nb(name: str) -> int:
        if name == "returned" and ops.get("w") is not None:
            return 0  # applied to the weights instead
        if name == "returned":
            src = ops["x"] if kernel == "ema_signed_" else ops["m"] if kernel == "complement_update" else ops["g"]
            return src.numel() * (2 if ops.get("out_dtype") == torch.bfloat16 else 4)
        t = ops.get(name)
        if name == "checks":
            return sum(c.numel() * c.element_size() for c in t)
        if name == "copies":  # (src, dst) of equal size: one read (READS) or one write (WRITES)
            return sum(d.numel() * d.element_size() for _, d in t)
        if name == "ym" and t is ops.get("yu"):
            return 0  # one Y for both products: read once
        return t.numel() * t.element_size() if isinstance(t, torch.Tensor) else 0

    return sum(nb(k) for k in READS[kernel]) + sum(nb(k) for k in WRITES[kernel])


# ------------------------------------------------------------------------------ timing
def make_timer(dry: bool, warmup: int, rep: int) -> Callable[[Callable[[], Any]], float]:
    """Median ms of ``fn``: ``triton.testing.do_bench`` on CUDA, a wall clock in the dry run."""
    if dry:

        def timer(fn: Callable[[], Any]) -> float:
            ts = []
            for _ in range(3):
                t0 = time.perf_counter()
                fn()
                ts.append((time.perf_counter() - t0) * 1e3)
            return statistics.median(ts)

        return timer
    import triton

    def timer(fn: Callable[[], Any]) -> float:
        return float(triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))

    return timer


def rotating(fn: Callable[..., Any], sets: list[dict[str, Any]]) -> Callable[[], Any]:
    """A closure calling ``fn(**set)`` on the next input set each time (defeats L2 reuse across calls)."""
    it = itertools.cycle(sets)
    return lambda: fn(**next(it))


def copy_bandwidth(nbytes: int, device: Any, timer: Callable[[Callable[[], Any]], float]) -> dict[str, float]:
    import torch

    src = torch.empty(nbytes, dtype=torch.uint8, device=device).random_(0, 255)
    dst = torch.empty_like(src)
    ms = timer(lambda: dst.copy_(src))
    return {"bytes": nbytes, "ms": ms, "gbps": 2 * nbytes / ms / 1e6}


def sweep_configs(kernel: str) -> list[dict[str, Any]]:
    """Block-size / warp variants tried by ``--sweep`` (module attribute overrides + num_warps)."""
    if kernel == "ema_signed_":
        return [
            {"moments.EMA_BG": bg, "moments.EMA_WARPS": w, "moments.EMA_BG_ODD": bg, "moments.EMA_WARPS_ODD": w}
            for bg in (16, 32, 64, 128)
            for w in (1, 2, 4, 8)
        ]
    if kernel == "rotated_adam_":
        return [{"moments.BG": bg, "moments.WARPS": w} for bg in (16, 32, 64) for w in (1, 2, 4)]
    if kernel == "adamw_":
        return [
            {"adamw.BG": bg, "adamw.WARPS": w, "adamw.MAXNREG": r}
            for bg in (16, 32, 64, 128)
            for w in (1, 2, 4, 8)
            for r in (None, 64)
        ]
    if kernel == "apply_update_":
        return [{"apply.BLOCK": bl, "num_warps": w} for bl in (1024, 2048, 4096) for w in (4, 8)]
    if kernel == "complement_update":  # tiles, warps, pipeline depth, rank chunk (32: masked past K = 144)
        return [
            {
                "lowrank.BM": bm,
                "lowrank.BN": bn,
                "lowrank.COMPLEMENT_WARPS": (w, w),
                "lowrank.COMPLEMENT_STAGES": st,
                "lowrank.COMPLEMENT_BK": bk,
                "lowrank.COMPLEMENT_BK_BF16": bk,
            }
            for bm, bn in ((64, 64), (64, 128), (128, 64))
            for w in (4, 8)
            for st in (2, 3, 4)
            for bk in (16, 32)
        ]
    if kernel in ("residual_sumsq", "residual_stats"):  # tiles, warps, pipeline depth
        return [
            {"lowrank.SUMSQ_BM": bm, "lowrank.SUMSQ_BN": bn, "lowrank.BK": bk, "num_stages": st, "num_warps": w}
            for bm, bn in ((64, 64), (64, 128), (128, 64))
            for bk in (16, 32)
            for w in (4, 8)
            for st in (2, 3)
        ]
    return [
        {"factor.MAX_BJ": bj, "factor.TILE": t, "num_warps": w}
        for bj in (64, 128, 256)
        for t in (2048, 4096, 8192)
        for w in (4, 8)
    ]


def with_config(cfg: dict[str, Any], fn: Callable[[], float]) -> float:
    """``fn()`` with the sweep setting ``cfg`` in force: ``MODULE.NAME`` keys set by :func:`.knobs.set_constant`,
    ``num_warps`` / ``num_stages`` / ``maxnreg`` in the common launch options; everything put back after."""
    from scao_dist.kernels import common

    saved = {k: knobs.set_constant(k, v) for k, v in cfg.items() if "." in k}
    launch = dict(common.LAUNCH)
    try:
        common.LAUNCH.update({k: v for k, v in cfg.items() if k in ("num_warps", "num_stages", "maxnreg")})
        return fn()
    finally:
        for k, v in saved.items():
            knobs.set_constant(k, v)
        common.LAUNCH.clear()
        common.LAUNCH.update(launch)


# ------------------------------------------------------------------------------ main
def verify_on(device: Any, dry: bool, only: Sequence[str] = ()) -> dict[str, Any]:
    """Kernel == twin on the device: odd small shapes (all variants), plus a few large operands
    (``only``: these kernels alone)."""
    import torch

    from scao_dist.kernels import triton_ops, verify

    gen = torch.Generator().manual_seed(0)
    if dry:  # the interpreter is slow: one case per kernel and mode
        cases = {
            "ema_signed_": [verify.case_ema((3, 33), m, gen, device) for m in ("state", "overwrite")],
            "rotated_adam_": [verify.case_rotated_adam((3, 33), m, gen, device) for m in ("state", "overwrite")],
            "apply_update_": [verify.case_apply((3, 33), m, gen, device) for m in ("state", "overwrite")],
            "factor_ema_corr_": [verify.case_factor((2,), 19, m, gen, device) for m in ("state", "overwrite")],
            "adamw_": [verify.case_adamw((3, 33), m, gen, device) for m in ("state", "overwrite")],
            "residual_sumsq": [
                verify.case_residual((3, 5, 33, k), m, gen, device) for m, k in (("exact", 40), ("dense", 7))
            ],
            "residual_stats": [verify.case_residual_stats((3, 5, 33, 40), "exact", gen, device, mask="some")],
            "complement_update": [
                verify.case_complement_update((3, 5, 33), m, gen, device) for m in ("exact", "dense")
            ],
        }
    else:
        cases = verify.small_cases(gen, device)
        for mode in ("state", "overwrite"):
            cases["ema_signed_"].append(verify.case_ema((6, 301, 1001), mode, gen, device))
            cases["rotated_adam_"].append(verify.case_rotated_adam((6, 301, 1001), mode, gen, device))
            cases["apply_update_"].append(verify.case_apply((6, 301, 1001), mode, gen, device))
            cases["apply_update_"].append(verify.case_apply((6, 301, 1001), mode, gen, device, torch.bfloat16, 16))
            cases["factor_ema_corr_"].append(verify.case_factor((3,), 1024, mode, gen, device))
            cases["factor_ema_corr_"].append(verify.case_factor((1,), 2055, mode, gen, device))  # ragged tiles
            cases["adamw_"].append(verify.case_adamw((3001, 767), mode, gen, device, bc=("tensor", "tensor")))
        for mode, bc in (("exact", ("tensor", "tensor")), ("dense", ("float", "float"))):
            cases["complement_update"].append(verify.case_complement_update((3, 301, 1001), mode, gen, device, bc=bc))
            cases["complement_update"].append(
                verify.case_complement_update((2, 3072, 768), mode, gen, device, bc=bc, k=(128, 144))
            )
            cases["complement_update"].append(
                verify.case_complement_update((3, 301, 1001), mode, gen, device, bc=bc, apply=(torch.bfloat16, 8))
            )
            cases["residual_sumsq"].append(verify.case_residual((3, 301, 1001, 40), mode, gen, device))
            cases["residual_sumsq"].append(verify.case_residual((2, 3072, 768, 144), mode, gen, device))
            cases["residual_sumsq"].append(
                verify.case_residual((2, 2048, 4096, 144), mode, gen, device, gdtype=torch.bfloat16)
            )
            # as a 405M step with bf16 stream bases: Q_R read as stored (and shared), bf16 M
            cases["residual_sumsq"].append(
                verify.case_residual((2, 2048, 4096, 144), mode, gen, device, torch.bfloat16, bf16="y")
            )
            big = verify.case_complement_update(
                (2, 2048, 4096), mode, gen, device, bc=bc, k=(144, 144), apply=(torch.bfloat16, 8), bf16="shared"
            )
            cases["complement_update"].append(big)
        for mask in ("every", "some"):
            cases["residual_stats"].append(
                verify.case_residual_stats((3, 2048, 4096, 144), "exact", gen, device, torch.bfloat16, mask)
            )
        cases["ema_signed_"].append(verify.case_ema((4, 2048, 4096), "state", gen, device, xdtype=torch.bfloat16))
        cases["ema_signed_"].append(
            verify.case_ema((4, 2048, 4096), "state", gen, device, torch.bfloat16, out_dtype=torch.bfloat16)
        )
        cases["factor_ema_corr_"].append(verify.case_factor((3,), 777, "boundary", gen, device))
    if only:
        cases = {k: v for k, v in cases.items() if k in only}
    t0 = time.perf_counter()
    res = verify.run_cases(cases, triton_ops, log=lambda s: print(f"  verify {s}", flush=True))
    if not only or "finite_gather" in only:  # (its own suite: flags planted, copies into poisoned buffers)
        res["finite_gather"] = verify.finite_gather_errors(triton_ops, gen, device)
        print(f"  verify finite_gather: {'ok' if not res['finite_gather'] else 'mismatches'}", flush=True)
    if not only or "division" in only:  # (the codecs' division, exhaustively on a GPU: 2^30 cases per regime)
        res["division"] = verify.division_errors(device, **({} if device.type == "cuda" else verify.DIVISION_SLICE))
        print(f"  verify division: {'ok' if not res['division'] else res['division']}", flush=True)
    fails = [e for errs in res.values() for e in errs]
    return {
        "ok": not fails,
        "cases": {k: len(v) for k, v in cases.items()}
        | {"finite_gather": int("finite_gather" in res), "division": int("division" in res)},
        "failures": fails[:200],
        "seconds": time.perf_counter() - t0,
    }


def table(rows: list[dict[str, Any]], copy: dict[str, float]) -> str:
    head = (
        f"copy bandwidth (device-to-device, read+write): {copy['gbps']:.0f} GB/s\n\n"
        "| kernel | variant | shape | MB moved | Triton ms | GB/s | % of copy | twin ms | speedup |\n"
        "|---|---|---|---:|---:|---:|---:|---:|---:|\n"
    )
    body = "".join(
        f"| `{r['kernel']}` | {r['variant']} | {r['shape']} | {r['bytes'] / 1e6:.4g} | {r['ms']:.3f} | "
        f"{r['gbps']:.0f} | {100 * r['frac_of_copy']:.0f}% | {r['twin_ms']:.3f} | {r['twin_ms'] / r['ms']:.1f}x |\n"
        for r in rows
    )
    return head + body


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.dry_run:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the kernels' import
        if os.environ["TRITON_INTERPRET"] != "1":
            print("--dry-run needs TRITON_INTERPRET=1", file=sys.stderr)
            return 2
        # numpy (the interpreter) warns where fp32 saturates on purpose; the GPU does it silently
        warnings.filterwarnings("ignore", "overflow encountered", RuntimeWarning)
    import torch
    import triton

    from scao_dist.kernels import reference, triton_ops, verify

    settings = knobs.apply_settings(args.set)

    if args.dry_run:
        device = torch.device("cpu")
        name = f"CPU ({platform.processor() or platform.machine()}), Triton interpreter"
    else:
        if not torch.cuda.is_available():
            print("no CUDA device (use --dry-run for the CPU smoke test)", file=sys.stderr)
            return 2
        device = torch.device("cuda")
        name = torch.cuda.get_device_name()
        torch.backends.cuda.matmul.allow_tf32 = True  # as the training benchmarks: the low-rank products in TF32
    print(f"# bench.kernels on {name} (torch {torch.__version__}, triton {triton.__version__})", flush=True)

    only = [k for k in args.only.split(",") if k]
    unknown = sorted(set(only) - set(verify.KERNELS) - set(EXTRA) - set(CHECKS))
    if unknown:
        choices = sorted(verify.KERNELS + EXTRA + CHECKS)
        print(f"--only: unknown kernel(s) {unknown}; choose from {choices}", file=sys.stderr)
        return 2
    print("verifying kernels against their twins ...", flush=True)
    ver = verify_on(device, args.dry_run, only)
    print(f"verification: {'ok' if ver['ok'] else 'FAILED'} ({ver['seconds']:.1f}s)", flush=True)
    for e in ver["failures"][:20]:
        print("  ", e)

    timer = make_timer(args.dry_run, args.warmup, args.rep)
    copy_bytes = 4096 if args.dry_run else int(args.mb * 1e6 / 2)
    copy = copy_bandwidth(copy_bytes, device, timer)
    rows = []
    for kernel, variant, spec in shapes(args.dry_run, args.mb):
        if (only and kernel not in only) or args.match not in variant:
            continue
        sets = [make_operands(kernel, spec, device) for _ in range(max(1, args.sets))]
        nbytes = moved_bytes(kernel, sets[0])
        shp = spec.get("shape", (spec.get("batch"), spec.get("d"), spec.get("d")))
        k_fn = rotating(getattr(triton_ops, kernel), sets)
        ms = timer(k_fn)
        twin_ms = timer(rotating(getattr(reference, kernel), sets))
        row = {
            "kernel": kernel,
            "variant": variant,
            "shape": "x".join(str(s) for s in shp),
            "bytes": nbytes,
            "ms": ms,
            "gbps": nbytes / ms / 1e6,
            "frac_of_copy": nbytes / ms / 1e6 / copy["gbps"],
            "twin_ms": twin_ms,
        }
        if args.sweep:
            grid = json.loads(args.grid) if args.grid else sweep_configs(kernel)
            row["sweep"] = [dict(cfg, ms=with_config(cfg, lambda f=k_fn: timer(f))) for cfg in grid]
            best = min(row["sweep"], key=lambda c: c["ms"])
            print(f"  sweep {kernel} {variant}: best {best} ({nbytes / best['ms'] / 1e6:.0f} GB/s)", flush=True)
        print(f"  {kernel:14s} {variant:28s} {row['gbps']:8.0f} GB/s ({100 * row['frac_of_copy']:.0f}% of copy), "
              f"twin {twin_ms:.3f} ms", flush=True)  # fmt: skip
        rows.append(row)
        del sets, k_fn  # the rotating closure holds the operands too
        if device.type == "cuda":
            torch.cuda.empty_cache()

    md = table(rows, copy)
    print()
    print(md)
    out = {
        "device": name,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "dry_run": args.dry_run,
        "copy": copy,
        "verify": ver,
        "settings": settings,
        "kernels": rows,
        "markdown": md,
        "min_frac_of_copy": min((r["frac_of_copy"] for r in rows), default=math.nan),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    print(f"wrote {args.out}")
    return 0 if ver["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
