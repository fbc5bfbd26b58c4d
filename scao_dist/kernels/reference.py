"""Plain-torch reference versions of the fused elementwise steps (the oracle for the kernels).

Each function updates its quantized state *in place* and returns what the next stage needs.
The Triton kernels in this package compute the same expressions in the same order; the tests
compare them on fresh random inputs. Scalar divisions are spelled as products with the reciprocal
(``m * (1/bc1)``) and square roots go through :func:`quant.sqrt_rn`, so CPU torch, CUDA torch and
the kernels agree bit for bit (see :mod:`scao_dist.quant`). Shapes: leading dims are the
stacked blocks of a group, the codecs group the flattened trailing values in groups of
``quant.GROUP``.

The math, per element (``t`` = Adam step, ``bc1 = 1 - b1^t``, ``bc2 = 1 - b2^t``):

* :func:`ema_signed_`:   ``m <- b m + (1-b) x`` on a companded int8 moment; returns ``m``.
* :func:`rotated_adam_`: ``v <- b2 v + (1-b2) g^2`` on a sqrt-companded uint8 moment; returns
  the Adam direction ``u = (m/bc1) / (sqrt(v/bc2) + eps)``.
* :func:`apply_update_`: ``x <- x (1 - lr wd) - lr u`` on bf16 weights + correction bits
  (``x = w + rho ulp(w)/2R``, see ``quant.split_master``), or in place on fp32 weights.
* :func:`factor_ema_corr_`: ``L <- b L + (1-b) A`` on an int8 correlation + exact fp32 diagonal
  factor (``quant.encode_corr``, what SCAO keeps), dithered rounding.
* :func:`adamw_`:        the whole AdamW step of the 1-D path (both moments + apply) in one go.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import quant


def ema_signed_(codes: Tensor, scales: Tensor, x: Tensor, beta: float) -> Tensor:
    """In-place EMA of an int8 companded moment with ``x`` (B, N); returns the new fp32 value."""
    n = x.shape[-1]
    m = quant.decode_signed(codes, scales, n) * beta + x * (1.0 - beta)
    c, s = quant.encode_signed(m)
    codes.copy_(c)
    scales.copy_(s)
    return m


def rotated_adam_(
    codes: Tensor,
    scales: Tensor,
    g: Tensor,
    m: Tensor,
    beta2: float,
    bc1: Tensor | float,
    bc2: Tensor | float,
    eps: float,
) -> Tensor:
    """In-place EMA of the uint8 sqrt-companded ``v`` with ``g^2``; returns the Adam direction.

    ``g`` and ``m`` are (B, N) fp32; ``bc1``/``bc2`` are floats or (B, 1) tensors.
    """
    n = g.shape[-1]
    v = quant.decode_sqrt(codes, scales, n) * beta2 + (g * g) * (1.0 - beta2)
    c, s = quant.encode_sqrt(v)
    codes.copy_(c)
    scales.copy_(s)
    vq = quant.decode_sqrt(c, s, n, floor_zero=True)  # the denominator sees the stored value
    return (m * (1.0 / bc1)) / (quant.sqrt_rn(vq * (1.0 / bc2)) + eps)


def apply_update_(w: Tensor, rho: Tensor | None, u: Tensor, lr: float, wd: float) -> None:
    """In-place decoupled-weight-decay step on ``w`` (fp32, or bf16 with correction ``rho``)."""
    if rho is None:
        w.mul_(1.0 - lr * wd).sub_(u * lr)
        return
    x = quant.join_master(w, rho) * (1.0 - lr * wd) - u * lr
    bits = 8 if rho.dtype == torch.int8 else 16
    nw, nr = quant.split_master(x, bits)
    w.copy_(nw)
    rho.copy_(nr)


def factor_ema_corr_(codes: Tensor, diag: Tensor, outer: Tensor, beta: float, seed: Tensor | int) -> None:
    """In-place ``L <- beta L + (1 - beta) outer`` on an int8 correlation-coded factor (B, d, d)."""
    f = quant.decode_corr(codes, diag) * beta + outer * (1.0 - beta)
    c, dg = quant.encode_corr(f, seed)
    codes.copy_(c)
    diag.copy_(dg)


def adamw_(
    w: Tensor,
    rho: Tensor | None,
    g: Tensor,
    m_codes: Tensor,
    m_scales: Tensor,
    v_codes: Tensor,
    v_scales: Tensor,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    bc1: float,
    bc2: float,
    eps: float,
    wd: float,
) -> None:
    """AdamW on (B, N) blocks with int8 moments and bf16+correction (or fp32) weights."""
    m = ema_signed_(m_codes, m_scales, g, beta1)
    u = rotated_adam_(v_codes, v_scales, g, m, beta2, bc1, bc2, eps)
    apply_update_(w, rho, u, lr, wd)
