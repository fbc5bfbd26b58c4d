"""The whole 1-D/small-parameter AdamW step ``adamw_`` in one kernel.

Per [BG, 32] tile of scale groups: read g, the int8 m (codes + scales), the uint8 sqrt-v
(codes + scales) and the weights (+ correction bits) once; compute

    m = b1 m + (1-b1) g                      -> re-encode m
    v = b2 v + (1-b2) g²                     -> re-encode v, v̂ = decode(v) with the zero floor
    u = (m/bc1) / (sqrt(v̂/bc2) + eps)        (the root from the codes: .common.adam_root)
    x = x (1 - lr wd) - lr u                 -> fp32 w, or bf16 w + rho

and write every state once. The old m is decoded by the companding's branch-free division
(:func:`.common.decode_signed`; :data:`DECODE_LUT`: through :func:`.moments.decode_table`) and the codecs
divide by their group scales once per group (:func:`.common.div_by_groups`): the kernel is bound by its
instructions (IEEE divisions and the codecs), not its bytes. Many small params of one shape are the rows
of one (B, n) group: one launch. With ``hyper`` (:class:`.scalars.StepScalars`) the kernel loads ``1/bc1``, ``1/bc2``,
``c = 1 - lr wd`` and ``lr`` from it (b1, b2, eps stay arguments).
Twin: :func:`.reference.adamw_` (= ema_signed_ + rotated_adam_ + apply_update_).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import reference
from .apply import correction_r, master_update, weights_ok
from .common import (
    HP_C,
    HP_IB1,
    HP_IB2,
    HP_LR,
    LAUNCH,
    SHAPE_ARGS,
    adam_root,
    bf16_bits,
    bf16_to_f32,
    bias_rows,
    decode_signed,
    decode_sqrt,
    encode_signed,
    encode_sqrt,
    gate_shut,
    group_layout,
    group_tile,
    hyper_row,
    int32_offsets,
    packed_ok,
    writable,
    write_back,
)
from .moments import decode_table
from .scalars import StepScalars

BG = 16
WARPS = 1
MAXNREG: int | None = 64
"""Scale groups per program, warps and the register cap of the launch: 16 groups on one warp (16 values a thread)
capped at 64 registers ran 0.96x the time of 64 groups on 4 warps uncapped with bf16 weights, 0.88x with fp32 on an
H200 (``bench.kernels --only adamw_ --sweep``, BENCHMARKS.md §0q, ``session_sb``): with fewer instructions a value
the kernel is bound by latency, and smaller programs at a lower register count keep more of them in flight (the
``session_tb`` sweep, before the codecs' last cuts, had favoured 64 groups on 4 warps)."""


DECODE_LUT = False
"""Decode the first moment's codes through :func:`.moments.decode_table` (a cached load a value) instead of
:func:`.common.decode_signed`'s branch-free division: the division ran 0.96x the table's time with bf16 weights,
0.94x with fp32 on an H200 (``bench.kernels --only adamw_ --sweep``, BENCHMARKS.md §0r, ``session_rc``), as in the
first moment's kernel on rows of a multiple of 32 (its other rows keep the table: ``moments.DECODE_LUT_ODD``)."""

GRAD_DTYPES = (torch.float32, torch.bfloat16)
"""Gradients the kernel reads (a bf16 one is widened to fp32 exactly, as the twin does)."""


@triton.jit(do_not_specialize=SHAPE_ARGS)
def _adamw_kernel(
    w_ptr, rho_ptr, g_ptr, mc_ptr, ms_ptr, vc_ptr, vs_ptr, ib1_ptr, ib2_ptr, hp_ptr, lut_ptr,
    nq, G, gm, gs, total, beta1, omb1, beta2, omb2, ib1, ib2, eps, c, lr,
    BG: tl.constexpr, NMUL: tl.constexpr, BC1_ROWS: tl.constexpr, BC2_ROWS: tl.constexpr, R: tl.constexpr,
    HP_DEV: tl.constexpr, ALIGNED: tl.constexpr, LUT: tl.constexpr, I32: tl.constexpr,
):  # fmt: skip
    """The module docstring's step on a [BG, 32] tile of groups; ``HP_DEV``: ``ib1``, ``ib2``, ``c``, ``lr``
    loaded from the step scalars at ``hp_ptr``."""
    if HP_DEV:  # (a shut gate: nothing written)
        if gate_shut(hp_ptr):
            return
        ib1 = tl.load(hp_ptr + HP_IB1)
        ib2 = tl.load(hp_ptr + HP_IB2)
        c = tl.load(hp_ptr + HP_C)
        lr = tl.load(hp_ptr + HP_LR)
    gid, row, gmask, coff, xoff, valid = group_tile(nq, G, gm, gs, total, BG, NMUL, ALIGNED, I32)
    g = tl.load(g_ptr + xoff, mask=valid, other=0.0).to(tl.float32)  # fp32 or bf16 (widened exactly)
    # first moment (ema_signed_)
    qm = tl.load(mc_ptr + coff, mask=gmask[:, None], other=0)
    sm = bf16_to_f32(tl.load(ms_ptr + gid, mask=gmask, other=0))
    if LUT:
        y = tl.load(lut_ptr + (qm.to(tl.int32) + 128))  # decode_signed(qm, 1), as moments.decode_table holds it
        m = (y * sm[:, None]) * beta1 + g * omb1
    else:
        m = decode_signed(qm, sm[:, None]) * beta1 + g * omb1
    if not ALIGNED:  # the padding of the last group encodes as 0 (aligned: a stored group has no padding)
        m = tl.where(valid, m, 0.0)
    qm, smb, _ = encode_signed(m)
    tl.store(mc_ptr + coff, qm, mask=gmask[:, None])
    tl.store(ms_ptr + gid, smb, mask=gmask)
    # second moment and direction (rotated_adam_)
    qv = tl.load(vc_ptr + coff, mask=gmask[:, None], other=0)
    sv = bf16_to_f32(tl.load(vs_ptr + gid, mask=gmask, other=0))
    v = decode_sqrt(qv, sv[:, None]) * beta2 + (g * g) * omb2
    qv, svb, sv = encode_sqrt(v, valid, not ALIGNED)
    tl.store(vc_ptr + coff, qv, mask=gmask[:, None])
    tl.store(vs_ptr + gid, svb, mask=gmask)
    if BC1_ROWS:
        ib1 = tl.load(ib1_ptr + row, mask=gmask, other=1.0)[:, None]
    if BC2_ROWS:
        ib2 = tl.load(ib2_ptr + row, mask=gmask, other=1.0)
    u = tl.math.div_rn(m * ib1, adam_root(qv, sv, tl.sqrt_rn(ib2)) + eps)
    # apply (apply_update_)
    if R == 0:
        w = tl.load(w_ptr + xoff, mask=valid, other=0.0)
        tl.store(w_ptr + xoff, w * c - u * lr, mask=valid)
    else:
        wb = tl.load(w_ptr + xoff, mask=valid, other=0)
        rf = tl.load(rho_ptr + xoff, mask=valid, other=0).to(tl.float32)
        nb, nr = master_update(wb, rf, u, c, lr, R, True)
        tl.store(w_ptr + xoff, nb, mask=valid)
        tl.store(rho_ptr + xoff, nr.to(rho_ptr.dtype.element_ty), mask=valid)


def adamw_(
    w: torch.Tensor,
    rho: torch.Tensor | None,
    g: torch.Tensor,
    m_codes: torch.Tensor,
    m_scales: torch.Tensor,
    v_codes: torch.Tensor,
    v_scales: torch.Tensor,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    bc1: float,
    bc2: float,
    eps: float,
    wd: float,
    hyper: StepScalars | None = None,
) -> None:
    """Triton twin of :func:`.reference.adamw_` (same signature, everything in place)."""
    lead = tuple(g.shape[:-1])
    if hyper is None:
        ib1, ib2 = bias_rows(bc1, lead, g.device), bias_rows(bc2, lead, g.device)
        floats = (lr, beta1, beta2, eps, wd)
    else:  # ib1, ib2, c, lr: never read, the kernel loads them from the row
        ib1 = ib2 = 1.0
        floats = (beta1, beta2, eps)
    hp = hyper_row(hyper, g.device, g)
    ok = (
        packed_ok(m_codes, m_scales, g, torch.int8, GRAD_DTYPES)
        and packed_ok(v_codes, v_scales, g, torch.uint8, GRAD_DTYPES)
        and weights_ok(w, rho, g)
        and ib1 is not None
        and ib2 is not None
        and hp is not None
        and all(isinstance(h, float | int) for h in floats)
    )
    layout = group_layout(g) if ok else None
    if layout is None:
        return reference.adamw_(
            w, rho, g, m_codes, m_scales, v_codes, v_scales,
            lr=lr, beta1=beta1, beta2=beta2, bc1=bc1, bc2=bc2, eps=eps, wd=wd, hyper=hyper,
        )  # fmt: skip
    shape_args, nmul = layout
    if shape_args[-1] == 0:
        return None
    R = correction_r(rho)
    bufs = [writable(t) for t in (w, m_codes, m_scales, v_codes, v_scales)]
    wb, mc, ms, vc, vs = bufs
    rb = writable(rho) if rho is not None else None
    rows1, rows2 = isinstance(ib1, torch.Tensor), isinstance(ib2, torch.Tensor)
    c, lr = (1.0, 0.0) if hyper is not None else (1.0 - lr * wd, float(lr))
    grid = (triton.cdiv(shape_args[-1], BG),)
    _adamw_kernel[grid](
        bf16_bits(wb) if R else wb, rb if R else wb, g.contiguous(), mc, bf16_bits(ms), vc, bf16_bits(vs),
        ib1 if rows1 else g, ib2 if rows2 else g, hp, decode_table(g.device) if DECODE_LUT else g,
        *shape_args, float(beta1), 1.0 - beta1, float(beta2), 1.0 - beta2,
        1.0 if rows1 else ib1, 1.0 if rows2 else ib2, float(eps), c, lr,
        BG=BG, NMUL=nmul, BC1_ROWS=rows1, BC2_ROWS=rows2, R=R, HP_DEV=hyper is not None,
        ALIGNED=g.shape[-1] % 32 == 0, LUT=DECODE_LUT, I32=int32_offsets(g, shape_args[-1]),
        **{**LAUNCH, "num_warps": WARPS},
        **({"maxnreg": MAXNREG} if MAXNREG else {}),
    )  # fmt: skip
    for dst, buf in zip((w, m_codes, m_scales, v_codes, v_scales), bufs):
        write_back(dst, buf)
    if rho is not None:
        write_back(rho, rb)
    return None
