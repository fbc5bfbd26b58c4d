"""Fused parameter update ``apply_update_``: ``x <- x (1 - lr wd) - lr u`` in one pass.

fp32 weights are updated in place. bf16 weights carry correction bits ``rho`` (int8, R = 127, or
int16, R = 32767; see ``quant.split_master``): the kernel reads ``w``, ``rho`` and ``u`` once,
rebuilds ``x = w + rho·ulp(w)/2R``, updates it, and writes back ``w' = bf16(x')`` and
``rho' = round(2R (x' - w') / ulp(w'))``. Elementwise over every leading dim: one launch.
With ``hyper`` (:class:`.scalars.StepScalars`) the kernel loads ``c = 1 - lr wd`` and ``lr`` from it.
Twin: :func:`.reference.apply_update_`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import reference
from .common import (
    HP_C,
    HP_LR,
    LAUNCH,
    bf16_bits,
    bf16_to_f32,
    f32_to_bf16,
    gate_shut,
    hyper_row,
    rint,
    rint_i32,
    writable,
    write_back,
)
from .scalars import StepScalars

BLOCK = 2048
"""Elements per program."""


@triton.jit
def master_update(wb, rf, u, c, lr, R: tl.constexpr, SHORT: tl.constexpr):
    """(bf16 bits, fp32 rho, update) -> (new bf16 bits, new rho): join, step, split.

    x = (w + rho·(ulp(w)·(1/2R)))·c - u·lr ; w' = bf16(x) ; rho' = clamp(round((x - w')·2R / ulp(w')), ±R)

    The division by the power of two ``ulp(w')`` is a product (:func:`over_bf16_ulp`), same bits. Two spellings of
    the same bits: ``SHORT`` (``apply_update_``, ``adamw_``) takes ``ulp(w)·(1/2R)`` as one product of ``w``'s power
    of two (:func:`exponent_bits`) and the constant ``2^-7·(1/2R)`` (the same real number as the twin's two
    factors, so the same rounding: ``ulp(w) = 2^(E-134)`` is exact, and so is ``2^-7`` times the fp32 ``1/2R``) and
    rounds ``rho'`` by the hardware's conversion (:func:`.common.rint_i32`, int32 out); the long form (the
    complement's epilogue, which ran ~10% slower in the 405M step with the short one: its compiled schedule at 168
    registers, BENCHMARKS.md §0q) builds ``ulp`` from the exponent field as :func:`scao_dist.quant.bf16_ulp` does and
    rounds in fp32 (:func:`.common.rint`, fp32 out).
    """
    w = bf16_to_f32(wb)
    if SHORT:
        step = exponent_bits(w).to(tl.float32, bitcast=True) * (0.0078125 / (2.0 * R))  # 2^-7 / 2R
    else:
        step = bf16_ulp(w) * (1.0 / (2.0 * R))
    x = (w + rf * step) * c - u * lr
    nb = f32_to_bf16(x)
    nw = bf16_to_f32(nb)
    if SHORT:
        r = rint_i32(over_bf16_ulp((x - nw) * (2.0 * R), nw, True))
    else:
        r = rint(over_bf16_ulp((x - nw) * (2.0 * R), nw, False))
    return nb, tl.minimum(tl.maximum(r, -R), R)


@triton.jit
def exponent_bits(w):
    """The bits of ``2^(E-127)`` for fp32 ``w`` with ``E = max(exponent field, 1)`` (``w``'s power of two, the
    smallest normal for zeros and subnormals): ``bf16_ulp(w) = 2^(E-134)`` is that times ``2^-7``."""
    return tl.maximum(w.to(tl.int32, bitcast=True) & 0x7F800000, 0x00800000)


@triton.jit
def bf16_ulp(w):
    """``quant.bf16_ulp``: spacing of bf16 at fp32 ``w`` (a bf16 value): ``2^(E-134)``, E = max(exp, 1).

    Built from bits: a normal fp32 for E > 7, a subnormal ``2^(E+15) * 2^-149`` for E <= 7.
    """
    e = (w.to(tl.int32, bitcast=True) >> 23) & 0xFF
    normal = ((e - 7) << 23).to(tl.float32, bitcast=True)
    sub = (1 << (tl.minimum(tl.maximum(e, 1), 7) + 15)).to(tl.float32, bitcast=True)  # shift < 32
    return tl.where(e > 7, normal, sub)


@triton.jit
def over_bf16_ulp(a, w, SHORT: tl.constexpr):
    """``a / bf16_ulp(w)``, bit for bit as ``div_rn`` gives it, without a division.

    ``bf16_ulp(w) = 2^(E-134)`` (E = max(exponent field, 1)), so the quotient is ``a`` times the power
    of two ``2^(134-E)``: one product, rounded once like the division (both round the same real
    number). For E < 7 that factor overflows fp32; ``a 2^64`` first (exact: only ``a``'s exponent
    moves, and ``|a| <= 2^8 ulp(w)`` cannot overflow), then ``2^(70-E)``. ``SHORT``: built from
    :func:`exponent_bits` ``= E << 23``, as ``(261 << 23) - (E << 23)``; else from the field itself.
    """
    if SHORT:
        eb = exponent_bits(w)
        small = eb < (7 << 23)
        inv = (tl.where(small, 197 << 23, 261 << 23) - eb).to(tl.float32, bitcast=True)  # 2^(70-E) or 2^(134-E)
    else:
        e = tl.maximum((w.to(tl.int32, bitcast=True) >> 23) & 0xFF, 1)
        small = e < 7
        inv = (tl.where(small, 197 - e, 261 - e) << 23).to(tl.float32, bitcast=True)
    pre = tl.where(small, 18446744073709551616.0, 1.0)  # 2^64
    return (a * pre) * inv


@triton.jit
def _apply_kernel(w_ptr, rho_ptr, u_ptr, hp_ptr, N, c, lr, R: tl.constexpr, BLOCK: tl.constexpr, HP_DEV: tl.constexpr):
    """R == 0: fp32 weights, w <- w·c - u·lr.  R > 0: bf16 bits + correction of range R.
    ``HP_DEV``: ``c``, ``lr`` loaded from the step scalars at ``hp_ptr``."""
    if HP_DEV:  # (a shut gate: nothing written)
        if gate_shut(hp_ptr):
            return
        c = tl.load(hp_ptr + HP_C)
        lr = tl.load(hp_ptr + HP_LR)
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    u = tl.load(u_ptr + offs, mask=mask, other=0.0)
    if R == 0:
        w = tl.load(w_ptr + offs, mask=mask, other=0.0)
        tl.store(w_ptr + offs, w * c - u * lr, mask=mask)
    else:
        wb = tl.load(w_ptr + offs, mask=mask, other=0)
        rf = tl.load(rho_ptr + offs, mask=mask, other=0).to(tl.float32)
        nb, nr = master_update(wb, rf, u, c, lr, R, True)
        tl.store(w_ptr + offs, nb, mask=mask)
        tl.store(rho_ptr + offs, nr.to(rho_ptr.dtype.element_ty), mask=mask)


def correction_r(rho: torch.Tensor | None) -> int | None:
    """Code range R of the correction bits (0 for none), or None for a dtype the kernels lack."""
    if rho is None:
        return 0
    return {torch.int8: 127, torch.int16: 32767}.get(rho.dtype)


def weights_ok(w: torch.Tensor, rho: torch.Tensor | None, like: torch.Tensor) -> bool:
    """fp32 weights without bits, or bf16 weights with int8/int16 bits, all shaped and placed like ``like``."""
    if w.shape != like.shape or w.device != like.device or correction_r(rho) is None:
        return False
    if rho is None:
        return w.dtype == torch.float32
    return w.dtype == torch.bfloat16 and rho.shape == w.shape and rho.device == w.device


def apply_update_(
    w: torch.Tensor,
    rho: torch.Tensor | None,
    u: torch.Tensor,
    lr: float,
    wd: float,
    hyper: StepScalars | None = None,
) -> None:
    """Triton twin of :func:`.reference.apply_update_` (same signature, in place)."""
    u = u.contiguous() if u.dtype == torch.float32 else u
    hp = hyper_row(hyper, u.device, u)
    floats = hyper is not None or (isinstance(lr, float | int) and isinstance(wd, float | int))
    if not weights_ok(w, rho, u) or u.dtype != torch.float32 or hp is None or not floats:
        return reference.apply_update_(w, rho, u, lr, wd, hyper=hyper)
    N = w.numel()
    if N == 0:
        return None
    R = correction_r(rho)
    wbuf = writable(w)
    rbuf = writable(rho) if rho is not None else None
    grid = (triton.cdiv(N, BLOCK),)
    c, lr = (1.0, 0.0) if hyper is not None else (1.0 - lr * wd, float(lr))  # with hyper: never read
    _apply_kernel[grid](
        bf16_bits(wbuf) if R else wbuf, rbuf if R else wbuf, u, hp, N, c, lr,
        R=R, BLOCK=BLOCK, HP_DEV=hyper is not None, **LAUNCH,
    )  # fmt: skip
    write_back(w, wbuf)
    if rho is not None:
        write_back(rho, rbuf)
    return None
