"""Fused moment steps: ``ema_signed_`` (first moment) and ``rotated_adam_`` (second moment + direction).

One program owns ``BG`` whole scale groups (a [BG, 32] tile), so the per-group absmax, the bf16
round-up of the scale and the re-encode happen in registers: each kernel reads its codes, scales
and fp32 operands once and writes codes, scales and the fp32 result once. All leading dims are
flattened into rows, so a group of stacked blocks is one launch. ``rotated_adam_`` with ``hyper``
(:class:`.scalars.StepScalars`) loads ``1/bc1``, ``1/bc2`` from it. Twins: :mod:`.reference`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import quant
from . import reference
from .common import (
    HP_IB1,
    HP_IB2,
    LAUNCH,
    SHAPE_ARGS,
    adam_root,
    bf16_bits,
    bf16_to_f32,
    bias_rows,
    decode_signed,
    decode_sqrt,
    div_magic,
    encode_signed,
    encode_sqrt,
    f32_to_bf16,
    floor_rows,
    gate_shut,
    group_layout,
    group_tile,
    hyper_row,
    int32_offsets,
    load_lanewise,
    magic_divisor,
    new_output,
    packed_ok,
    row_launch,
    row_tile,
    writable,
    write_back,
)
from .scalars import StepScalars

BG = 16
WARPS = 1
"""Scale groups per program and warps of ``rotated_adam_`` (16 x 32 values, 16 a thread): with Adam's root taken
from the codes (no square root a value) 0.96x / 0.98x the time of 32 groups on 4 warps on an H200 (``bench.kernels
--only rotated_adam_ --sweep``, BENCHMARKS.md §0s, ``session_qa``); before, 32 on 4 had run 1-19% faster than 64 (§0c).
Which program owns a group never changes its arithmetic."""


EMA_BG = 16
EMA_WARPS = 1
"""Scale groups per program and warps of :func:`ema_signed_` on rows of a multiple of 32 values (the aligned
path; :data:`BG` and :data:`WARPS` serve ``rotated_adam_``): 16 groups on one warp (16 values a thread), with
the codes decoded by the division (:data:`DECODE_LUT` false), ran the step's variant (bf16 in, bf16 out) in 0.97x
the time of 64 groups on 2 warps through the table (``session_rc``) and the 405M step's first moment in 719 against
758 us (``session_rd``). Before, 64 on 2 (32 values a thread) had run it in 0.85x the time of 32 on 4
(``session_tb``)."""

EMA_BG_ODD = 8
EMA_WARPS_ODD = 1
"""The same for other rows (a group's values found through its row): with ``x`` read lane by lane
(:data:`EMA_LANEWISE`), 8 groups on one warp (8 values a thread) ran rows of 3071 in 0.79x the time of 32 on 2 with
fp32 ``x``, 0.90x with bf16 ``x``; 4 or 16 groups, or 2 warps, were slower (``session_rb``, ``session_rc``). With
:data:`EMA_ROWS` 16 groups ran fp32 ``x`` in 0.97x the time and bf16 ``x`` in 1.11x; 8 on 2 warps or 32 on 4 slower
(``session_pb``)."""


EMA_LANEWISE = True
"""Read ``x`` lane by lane (:func:`.common.load_lanewise`) on rows whose values cannot be read 16 bytes at a time:
0.93-0.94x the time of the tile's own layout on rows of 3071, fp32 or bf16 ``x`` (``session_ra``, 32 groups on 2
warps both)."""

EMA_ROWS = True
"""On rows off the 32-value grid, give each :func:`ema_signed_` program ``EMA_BG_ODD`` groups of one row
(:func:`.common.row_tile`) instead of any ``EMA_BG_ODD`` consecutive groups, whose rows each group divides out of its
index: the row is then the program's, and its values one contiguous run at one base (sm_90 instructions a thread on
rows of 767: 523 -> 414 with bf16 ``x``, 484 -> 395 with fp32). On an H200 rows of 3071 ran at 78% of the copy
bandwidth against 68% with bf16 ``x``, 90% against 85% with fp32 (``session_pb``, three pairs; BENCHMARKS.md §0)."""

DECODE_LUT = False
"""``ema_signed_`` looks its codes' unscaled values up in :func:`decode_table` (one cached load a value) instead of
dividing them out (:func:`.common.decode_signed`, the companding's branch-free division) on rows of a multiple of
32: the division won with the launch above (``session_rc``, ``session_rd``), at 91-101% of the copy bandwidth
(``session_re``)."""

DECODE_LUT_ODD = True
"""The same on rows off the 32-value grid, where the table wins: the division took 1.5x its time (``session_rc``)."""

_TABLES: dict[torch.device, torch.Tensor] = {}


def decode_table(device: torch.device) -> torch.Tensor:
    """fp32 ``phi / (2 - |phi|)`` with ``phi = q/127`` for every int8 code ``q`` (entry ``q + 128``): the
    signed code's value at scale 1, computed by :func:`scao_dist.quant.decode_signed` itself, so
    a decode through the table is the same bits as one that divides."""
    t = _TABLES.get(device)
    if t is None:
        q = torch.arange(-128, 128, dtype=torch.int8, device=device)
        one = torch.ones(8, dtype=torch.bfloat16, device=device)
        t = _TABLES[device] = quant.decode_signed(q, one, 256).contiguous()
    return t


@triton.jit(do_not_specialize=SHAPE_ARGS)
def _ema_signed_kernel(
    codes_ptr, scales_ptr, x_ptr, out_ptr, lut_ptr, hp_ptr, nq, G, gm, gs, total, beta, omb, BG: tl.constexpr,
    NMUL: tl.constexpr, OUT_BF16: tl.constexpr, LUT: tl.constexpr, HP_DEV: tl.constexpr, ALIGNED: tl.constexpr,
    LANEWISE: tl.constexpr, I32: tl.constexpr, ROWS: tl.constexpr,
):  # fmt: skip
    """m = decode(codes, scales)·beta + x·(1-beta); (codes, scales) <- encode(m); out <- m (x fp32 or bf16;
    ``OUT_BF16``: ``out`` holds bf16 bit patterns, m rounded to nearest even). ``LUT``: the code's unscaled
    value ``phi/(2-|phi|)`` read from a 256-entry table (:func:`decode_table`) instead of divided out.
    ``HP_DEV``: nothing is written when the step scalars' gate at ``hp_ptr`` is shut. ``LANEWISE``: ``x`` read
    through :func:`.common.load_lanewise` (rows off the 16-byte grid). ``ROWS``: each program's groups are of one row
    (:func:`.common.row_tile`; ``(gm, gs)`` divide by the chunks a row)."""
    if HP_DEV:  # noqa: SIM102 (the row is read only when there is one)
        if gate_shut(hp_ptr):
            return
    if ROWS:
        gid, _row, gmask, coff, xoff, valid = row_tile(nq, G, gm, gs, BG, NMUL)
    else:
        gid, _row, gmask, coff, xoff, valid = group_tile(nq, G, gm, gs, total, BG, NMUL, ALIGNED, I32)
    q = tl.load(codes_ptr + coff, mask=gmask[:, None], other=0)
    s = bf16_to_f32(tl.load(scales_ptr + gid, mask=gmask, other=0))
    if LANEWISE:
        x = load_lanewise(x_ptr, xoff, valid, BG).to(tl.float32)
    else:
        x = tl.load(x_ptr + xoff, mask=valid, other=0.0).to(tl.float32)
    if LUT:
        y = tl.load(lut_ptr + (q.to(tl.int32) + 128))
        m = (y * s[:, None]) * beta + x * omb
    else:
        m = decode_signed(q, s[:, None]) * beta + x * omb
    if not ALIGNED:  # the padding of the last group encodes as 0 (aligned: a stored group has no padding)
        m = tl.where(valid, m, 0.0)
    qn, sbits, _ = encode_signed(m)
    tl.store(codes_ptr + coff, qn, mask=gmask[:, None])
    tl.store(scales_ptr + gid, sbits, mask=gmask)
    if OUT_BF16:
        tl.store(out_ptr + xoff, f32_to_bf16(m), mask=valid)
    else:
        tl.store(out_ptr + xoff, m, mask=valid)


@triton.jit(do_not_specialize=[*SHAPE_ARGS, "fm", "fs"])
def _rotated_adam_kernel(
    codes_ptr, scales_ptr, g_ptr, m_ptr, out_ptr, ib1_ptr, ib2_ptr, hp_ptr, floor_ptr,
    nq, G, gm, gs, total, beta2, omb2, ib1, ib2, eps, fm, fs,
    BG: tl.constexpr, NMUL: tl.constexpr, BC1_ROWS: tl.constexpr, BC2_ROWS: tl.constexpr, HP_DEV: tl.constexpr,
    FLOOR: tl.constexpr, I32: tl.constexpr,
):  # fmt: skip
    """v = decode(codes)·b2 + g²·(1-b2); codes <- encode(v); u = (m/bc1) / (sqrt(max(v̂, f)/bc2) + eps).

    ``v̂`` is the stored value, decoded with the zero-code floor; its root is taken from the codes
    (:func:`.common.adam_root`, no square root a value). ``ib1``/``ib2`` are ``1/bc`` as
    scalars, per row (``BC*_ROWS``: loaded from ``ib*_ptr[row]``), or from the step scalars at
    ``hp_ptr`` (``HP_DEV``; nothing is written when its gate is shut). ``f``: ``floor_ptr[row // frows]`` with
    ``FLOOR`` (``(fm, fs) = magic_divisor(frows)``), else no floor. (One axis of groups: with each program's groups
    those of one row, :func:`.common.row_tile`, it ran no faster on an H200, ``session_pb``.)
    """
    if HP_DEV:  # noqa: SIM102 (the row is read only when there is one)
        if gate_shut(hp_ptr):
            return
    # (no ALIGNED: its widths vary)
    gid, row, gmask, coff, xoff, valid = group_tile(nq, G, gm, gs, total, BG, NMUL, False, I32)
    q = tl.load(codes_ptr + coff, mask=gmask[:, None], other=0)
    s = bf16_to_f32(tl.load(scales_ptr + gid, mask=gmask, other=0))
    g = tl.load(g_ptr + xoff, mask=valid, other=0.0)
    v = decode_sqrt(q, s[:, None]) * beta2 + (g * g) * omb2
    qn, sbits, sn = encode_sqrt(v, valid, True)
    tl.store(codes_ptr + coff, qn, mask=gmask[:, None])
    tl.store(scales_ptr + gid, sbits, mask=gmask)
    if HP_DEV:
        ib1 = tl.load(hp_ptr + HP_IB1)
        ib2 = tl.load(hp_ptr + HP_IB2)
    if BC1_ROWS:
        ib1 = tl.load(ib1_ptr + row, mask=gmask, other=1.0)[:, None]
    if BC2_ROWS:
        ib2 = tl.load(ib2_ptr + row, mask=gmask, other=1.0)
    r = tl.sqrt_rn(ib2)
    root = adam_root(qn, sn, r)
    if FLOOR:
        f = tl.load(floor_ptr + div_magic(row.to(tl.int32), fm, fs), mask=gmask, other=0.0)
        root = tl.maximum(root, (tl.sqrt_rn(f) * r)[:, None], propagate_nan=tl.PropagateNan.ALL)
    m = tl.load(m_ptr + xoff, mask=valid, other=0.0)
    u = tl.math.div_rn(m * ib1, root + eps)
    tl.store(out_ptr + xoff, u, mask=valid)


def ema_signed_(
    codes: torch.Tensor,
    scales: torch.Tensor,
    x: torch.Tensor,
    beta: float,
    out_dtype: torch.dtype = torch.float32,
    hyper: StepScalars | None = None,
) -> torch.Tensor:
    """Triton twin of :func:`.reference.ema_signed_` (same signature, in place, returns m in ``out_dtype``)."""
    x_ok = packed_ok(codes, scales, x, torch.int8, (torch.float32, torch.bfloat16))
    hp = hyper_row(hyper, x.device, x)
    bad = not isinstance(beta, float | int) or out_dtype not in (torch.float32, torch.bfloat16) or hp is None
    layout = group_layout(x) if x_ok else None
    if layout is None or bad:
        return reference.ema_signed_(codes, scales, x, beta, out_dtype, hyper=hyper)
    shape_args, nmul = layout
    total = shape_args[-1]
    out = new_output(x.shape, x.device, out_dtype)
    bf16 = out_dtype == torch.bfloat16
    if total == 0:
        return out
    c, s = writable(codes), writable(scales)
    aligned = x.shape[-1] % 32 == 0
    bg, warps = (EMA_BG, EMA_WARPS) if aligned else (EMA_BG_ODD, EMA_WARPS_ODD)
    use_lut = DECODE_LUT if aligned else DECODE_LUT_ODD
    lut = decode_table(x.device) if use_lut else c
    rows = EMA_ROWS and not aligned
    grid, shape_args = row_launch(shape_args, bg) if rows else ((triton.cdiv(total, bg),), shape_args)
    _ema_signed_kernel[grid](
        c, bf16_bits(s), x.contiguous(), bf16_bits(out) if bf16 else out, lut, hp, *shape_args, float(beta),
        1.0 - beta, BG=bg, NMUL=nmul, OUT_BF16=bf16, LUT=use_lut, HP_DEV=hyper is not None,
        ALIGNED=aligned, LANEWISE=EMA_LANEWISE and nmul * x.element_size() < 16, I32=int32_offsets(x, total),
        ROWS=rows, **{**LAUNCH, "num_warps": warps},
    )  # fmt: skip
    write_back(codes, c)
    write_back(scales, s)
    return out


def rotated_adam_(
    codes: torch.Tensor,
    scales: torch.Tensor,
    g: torch.Tensor,
    m: torch.Tensor,
    beta2: float,
    bc1: torch.Tensor | float,
    bc2: torch.Tensor | float,
    eps: float,
    hyper: StepScalars | None = None,
    floor: torch.Tensor | None = None,
) -> torch.Tensor:
    """Triton twin of :func:`.reference.rotated_adam_` (same signature, in place, returns fp32 u)."""
    lead = tuple(g.shape[:-1])
    fl = floor_rows(floor, lead, g.device) if floor is not None else None
    if hyper is None:
        ib1, ib2 = bias_rows(bc1, lead, g.device), bias_rows(bc2, lead, g.device)
    else:
        ib1 = ib2 = 1.0  # never read: the kernel loads them from the row
    hp = hyper_row(hyper, g.device, g)
    ok = packed_ok(codes, scales, g, torch.uint8) and m.shape == g.shape and m.dtype == torch.float32
    bad_floor = floor is not None and fl is None
    layout = group_layout(g) if ok else None
    if layout is None or ib1 is None or ib2 is None or hp is None or m.device != g.device or bad_floor:
        return reference.rotated_adam_(codes, scales, g, m, beta2, bc1, bc2, eps, hyper=hyper, floor=floor)
    shape_args, nmul = layout
    total = shape_args[-1]
    out = new_output(g.shape, g.device)
    if total == 0:
        return out
    c, s = writable(codes), writable(scales)
    rows1, rows2 = isinstance(ib1, torch.Tensor), isinstance(ib2, torch.Tensor)
    grid = (triton.cdiv(total, BG),)
    _rotated_adam_kernel[grid](
        c, bf16_bits(s), g.contiguous(), m.contiguous(), out,
        ib1 if rows1 else out, ib2 if rows2 else out, out if hyper is None else hp, out if fl is None else fl[0],
        *shape_args, float(beta2), 1.0 - beta2, 1.0 if rows1 else ib1, 1.0 if rows2 else ib2, float(eps),
        *magic_divisor(1 if fl is None else fl[1]),
        BG=BG, NMUL=nmul, BC1_ROWS=rows1, BC2_ROWS=rows2, HP_DEV=hyper is not None, FLOOR=fl is not None,
        I32=int32_offsets(g, total), **{**LAUNCH, "num_warps": WARPS},
    )  # fmt: skip
    write_back(codes, c)
    write_back(scales, s)
    return out
