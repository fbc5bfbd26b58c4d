"""Where the applied low-rank complement kernel spends its time (a GPU probe; never run by CI).

``kernels.complement_update`` applied to bf16 weights with int8 bits moves 10 bytes per weight
(fp32 ``M`` read; weights and bits read and written) but ran at ~30% of the copy bandwidth on an
H200, also at rank 16 (BENCHMARKS §0c), so its two low-rank products alone do not explain it. This
probe times copies of that kernel with one stage at a time left out or cheapened, side by side in
one run, after checking that the unchanged copy gives the library kernel's bits (true as of
``session_zm``; since then the library forms the denominator from row and column roots,
:func:`scao_dist.kernels.reference.complement_reciprocals`, so the copy is the earlier kernel and the check
reports the rounding difference):

* ``prod`` 2 / 1 / 0: both low-rank tiles, only ``X_u Y_u^T``, none;
* ``hoist``: the loads of ``M``, the weights and the bits issued before the products;
* ``fast``: the approximate division and square root instead of IEEE ``div_rn``/``sqrt_rn``;
* ``master`` 0: the weights written as ``bf16(w c - u lr)`` without the correction bits' arithmetic
  (the bits still read and written, so the bytes are the same);
* tile shapes and warps for the full kernel.

``--ncu``: launch the library kernel (and ``residual_sumsq`` on the same shape, bf16 G) a few times
only, for ``ncu`` to read their counters.

    python3 -m bench.complement_probe --out /tmp/probe.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
from typing import Any

import torch
import triton
import triton.language as tl

from scao_dist import quant
from scao_dist.kernels import complement_update, lowrank, reference
from scao_dist.kernels.apply import master_update
from scao_dist.kernels.common import HP_BC2, HP_C, HP_LR, bf16_bits, bf16_to_f32, f32_to_bf16
from scao_dist.kernels.lowrank import _operands, lowrank_tile, precision, residual_sumsq
from scao_dist.kernels.scalars import StepScalars


@triton.jit
def _probe_kernel(
    w_ptr, m_ptr, xu_ptr, yu_ptr, xm_ptr, ym_ptr, row_ptr, cs_ptr, floor_ptr, scale_ptr, rho_ptr, hp_ptr,
    M, N, KU, KM, ntm, ntn, eps,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr,
    PROD: tl.constexpr, HOIST: tl.constexpr, FAST: tl.constexpr, MASTER: tl.constexpr,
):  # fmt: skip
    """``lowrank._complement_update_kernel`` as of ``session_zm`` (applied, int8 bits, step scalars on the
    device, masked tile loads) with switches."""
    bc2 = tl.load(hp_ptr + HP_BC2)
    c = tl.load(hp_ptr + HP_C)
    lr = tl.load(hp_ptr + HP_LR)
    pid = tl.program_id(0)
    per = ntm * ntn
    b = pid // per
    t = pid - b * per
    tm = t // ntn
    i = tm * BM + tl.arange(0, BM)
    j = (t - tm * ntn) * BN + tl.arange(0, BN)
    mi, mj = i < M, j < N
    b64 = b.to(tl.int64)
    off = (b64 * M + i)[:, None] * N + j[None, :]
    mask = mi[:, None] & mj[None, :]
    if HOIST:
        m = tl.load(m_ptr + off, mask=mask, other=0.0)
        wb = tl.load(w_ptr + off, mask=mask, other=0)
        rf = tl.load(rho_ptr + off, mask=mask, other=0).to(tl.float32)
    u = tl.zeros((BM, BN), dtype=tl.float32)
    bm = tl.zeros((BM, BN), dtype=tl.float32)
    if PROD >= 1:
        u = lowrank_tile(xu_ptr, yu_ptr, b64, i, j, M, N, KU, KU, KU, BM, BN, BK, PREC)  # (contiguous: stride = rank)
    if PROD >= 2:
        bm = lowrank_tile(xm_ptr, ym_ptr, b64, i, j, M, N, KM, KM, KM, BM, BN, BK, PREC)
    r_i = tl.load(row_ptr + b64 * M + i, mask=mi, other=0.0)[:, None]
    c_j = tl.load(cs_ptr + b64 * N + j, mask=mj, other=0.0)[None, :]
    floor = tl.load(floor_ptr + b)
    scale = tl.load(scale_ptr + b)
    if not HOIST:
        m = tl.load(m_ptr + off, mask=mask, other=0.0)
        wb = tl.load(w_ptr + off, mask=mask, other=0)
        rf = tl.load(rho_ptr + off, mask=mask, other=0).to(tl.float32)
    r = m - bm
    v = tl.maximum(r_i * c_j, floor, propagate_nan=tl.PropagateNan.ALL)
    if FAST:
        d = tl.sqrt(tl.math.fdiv(v, bc2)) + eps
        u = u + tl.math.fdiv(r, d) * scale
    else:
        d = tl.sqrt_rn(tl.math.div_rn(v, bc2)) + eps
        u = u + tl.math.div_rn(r, d) * scale
    if MASTER:
        nb, nr = master_update(wb, rf, u, c, lr, 127)
    else:
        nb = f32_to_bf16(bf16_to_f32(wb) * c - u * lr)
        nr = rf + 1.0
    tl.store(w_ptr + off, nb, mask=mask)
    tl.store(rho_ptr + off, nr.to(rho_ptr.dtype.element_ty), mask=mask)


def operands(shape: tuple[int, int, int], k: int, device: torch.device, seed: int) -> dict[str, Any]:
    """One set of the applied kernel's operands: a 1e-3-scale moment, rank-``k`` factors, random weights."""
    gen = torch.Generator(device=device).manual_seed(seed)
    B, M, N = shape

    def rnd(*s: int) -> torch.Tensor:
        return torch.randn(*s, device=device, generator=gen) * 1e-3

    w, rho = quant.split_master(torch.randn(*shape, device=device, generator=gen), 8)
    row, col, g_row = rnd(B, M).square(), rnd(B, N).square(), rnd(B, M).square()
    mask = torch.ones(B, dtype=torch.bool, device=device)
    return dict(m=rnd(*shape), xu=rnd(B, M, k) * 30, yu=rnd(B, N, k) * 30, xm=rnd(B, M, k) * 30,
                ym=rnd(B, N, k) * 30, row=row, col=col, g_row=g_row, mask=mask, w=w, rho=rho)  # fmt: skip


def hyper_for(device: torch.device) -> StepScalars:
    return StepScalars.of(1e-3, 0.01, 1 - 0.9**7, 1 - 0.95**7, device)


def library(ops: dict[str, Any], hyper: StepScalars) -> None:
    complement_update(ops["m"], ops["xu"], ops["yu"], ops["xm"], ops["ym"], ops["row"], ops["col"], ops["g_row"],
                      ops["mask"], 1.0, 1.0, 1e-8, w=ops["w"], rho=ops["rho"], hyper=hyper)  # fmt: skip


def probe(ops: dict[str, Any], hyper: StepScalars, cfg: dict[str, Any]) -> None:
    m = ops["m"]
    B, M, N = m.shape
    cs, floor, scale = reference.complement_vectors(ops["row"], ops["col"], ops["g_row"], ops["mask"], 1.0, None, hyper)
    bm, bn = cfg.get("BM", 64), cfg.get("BN", 64)
    ntm, ntn = triton.cdiv(M, bm), triton.cdiv(N, bn)
    # the rank padded to a multiple of BK, as the library does; the probe's fp32 factors are contiguous
    xu, _, yu, _, k = _operands(m, ops["xu"].contiguous(), ops["yu"].contiguous())
    xm, _, ym, _, _ = _operands(m, ops["xm"].contiguous(), ops["ym"].contiguous())
    _probe_kernel[(B * ntm * ntn,)](
        bf16_bits(ops["w"]), m, xu, yu, xm, ym, ops["row"], cs, floor.reshape(B),
        scale.reshape(B), ops["rho"], hyper.row, M, N, k, k, ntm, ntn, 1e-8,
        BM=bm, BN=bn, BK=lowrank.BK, PREC=precision(), PROD=cfg.get("prod", 2), HOIST=cfg.get("hoist", False),
        FAST=cfg.get("fast", False), MASTER=cfg.get("master", True), num_warps=cfg.get("warps", 4),
        num_stages=cfg.get("stages", 3), enable_fp_fusion=False,
    )  # fmt: skip


def copy_bandwidth(dev: torch.device, nbytes: int = 400_000_000) -> float:
    """GB/s of a device-to-device copy of ``nbytes`` (read and write counted)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=25, rep=200, return_mode="median")
    return 2 * nbytes / ms / 1e6


def rotating(fn: Any, sets: list[dict[str, Any]]) -> Any:
    """``fn`` called on the input sets in turn (no L2 reuse between calls)."""
    it = itertools.cycle(sets)
    return lambda: fn(next(it))


VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("copy of the kernel", {}),
    ("no products", dict(prod=0)),
    ("one product", dict(prod=1)),
    ("hoisted loads", dict(hoist=True)),
    ("fast div/sqrt", dict(fast=True)),
    ("no bits arithmetic", dict(master=False)),
    ("fast + no bits", dict(fast=True, master=False)),
    ("no products, fast, no bits", dict(prod=0, fast=True, master=False)),
    ("hoisted, fast", dict(hoist=True, fast=True)),
    ("64x128 w8", dict(BN=128, warps=8)),
    ("128x64 w8", dict(BM=128, warps=8)),
    ("128x128 w8", dict(BM=128, BN=128, warps=8)),
    ("64x64 w8", dict(warps=8)),
    ("32x64 w4", dict(BM=32)),
    ("64x64 stages 2", dict(stages=2)),
    ("64x128 w8 hoisted", dict(BN=128, warps=8, hoist=True)),
]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="")
    ap.add_argument("--ncu", action="store_true", help="launch the library kernels 3 times each and exit")
    args = ap.parse_args(argv)
    dev = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True
    hyper = hyper_for(dev)
    shapes = [("405M (2,2048,8192) k=144", (2, 2048, 8192), 144), ("43M (8,3072,768) k=128", (8, 3072, 768), 128)]
    if args.ncu:
        ops = operands(shapes[0][1], shapes[0][2], dev, 0)
        g = ops["m"].to(torch.bfloat16)
        for _ in range(3):
            library(ops, hyper)
            residual_sumsq(g, ops["xu"], ops["yu"])
        torch.cuda.synchronize()
        return
    copy_gbps = copy_bandwidth(dev)
    print(f"copy {copy_gbps:.0f} GB/s")
    results: dict[str, Any] = {"device": torch.cuda.get_device_name(), "copy_gbps": copy_gbps, "shapes": {}}
    for label, shape, k in shapes:
        sets = [operands(shape, k, dev, s) for s in range(2)]
        a, b = ({n: t.clone() if isinstance(t, torch.Tensor) else t for n, t in sets[0].items()} for _ in range(2))
        library(a, hyper)
        probe(b, hyper, {})
        same = bool(torch.equal(bf16_bits(a["w"]), bf16_bits(b["w"])) and torch.equal(a["rho"], b["rho"]))
        nbytes = sets[0]["m"].numel() * 10
        rows: dict[str, Any] = {"probe_equals_library": same, "bytes": nbytes}
        print(f"== {label}: probe == library bit for bit: {same}")
        timings = [("library kernel", rotating(lambda o: library(o, hyper), sets))]
        timings += [(name, rotating(lambda o, c=cfg: probe(o, hyper, c), sets)) for name, cfg in VARIANTS]
        for name, fn in timings:
            ms = [triton.testing.do_bench(fn, warmup=25, rep=150, return_mode="median") for _ in range(3)]
            med = statistics.median(ms)
            pct = 100 * nbytes / med / 1e6 / copy_gbps
            rows[name] = {"ms": med, "pct_copy": pct}
            print(f"{name:32s} {med:7.3f} ms  {pct:5.1f}% of copy")
        results["shapes"][label] = rows
        del sets, a, b
        torch.cuda.empty_cache()
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
