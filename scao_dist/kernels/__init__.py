"""One dispatch point for the fused elementwise steps.

CUDA tensors go to the Triton kernels (when Triton is importable); everything else, and every
call while ``SCAO_REFERENCE_KERNELS=1`` is set or :func:`use_reference` is active, goes to the
plain-torch twins in :mod:`scao_dist.kernels.reference`. ``SCAO_TRITON_ON_CPU=1`` (with
``TRITON_INTERPRET=1``) sends CPU tensors to the kernels too, to run a whole optimizer through
the Triton interpreter.

``hyper`` (:class:`.scalars.StepScalars`): the step's lr and bias corrections as fp32 values on the
device, read by the kernels instead of the float arguments (which are then ignored), so a captured
(CUDA-graph) step can change them between replays. Same results, bit for bit, as the floats. Every
function here that writes state takes it, also those without a float to replace (:func:`ema_signed_`,
:func:`factor_ema_corr_`, :func:`residual_stats`): with the row's gate shut they write nothing.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
from torch import Tensor

from . import reference
from .scalars import StepScalars

_FORCE_REFERENCE = os.environ.get("SCAO_REFERENCE_KERNELS", "0") == "1"
_TRITON_ON_CPU = os.environ.get("SCAO_TRITON_ON_CPU", "0") == "1"

try:  # Triton is optional (Linux only); the reference path always works
    from . import triton_ops as _triton
except Exception:
    _triton = None


@contextlib.contextmanager
def use_reference(flag: bool = True) -> Iterator[None]:
    """Force (or stop forcing) the plain-torch path inside the block, for debugging."""
    global _FORCE_REFERENCE
    old, _FORCE_REFERENCE = _FORCE_REFERENCE, flag
    try:
        yield
    finally:
        _FORCE_REFERENCE = old


def backend(t: Tensor) -> object:
    """The module that implements the steps for tensors like ``t``."""
    if _triton is not None and not _FORCE_REFERENCE and (t.is_cuda or _TRITON_ON_CPU):
        return _triton
    return reference


def ema_signed_(codes, scales, x, beta, out_dtype=torch.float32, hyper: StepScalars | None = None):
    return backend(x).ema_signed_(codes, scales, x, beta, out_dtype, hyper=hyper)


def rotated_adam_(codes, scales, g, m, beta2, bc1, bc2, eps, hyper: StepScalars | None = None, floor=None):
    return backend(g).rotated_adam_(codes, scales, g, m, beta2, bc1, bc2, eps, hyper=hyper, floor=floor)


def apply_update_(w, rho, u, lr, wd, hyper: StepScalars | None = None):
    return backend(u).apply_update_(w, rho, u, lr, wd, hyper=hyper)


def factor_ema_corr_(codes, diag, outer, beta, seed, hyper: StepScalars | None = None):
    return backend(outer).factor_ema_corr_(codes, diag, outer, beta, seed, hyper=hyper)


def adamw_(w, rho, g, m_codes, m_scales, v_codes, v_scales, **hp):
    return backend(g).adamw_(w, rho, g, m_codes, m_scales, v_codes, v_scales, **hp)


def residual_sumsq(g, x=None, y=None):
    return backend(g).residual_sumsq(g, x, y)


def residual_stats(g, x, y, g_row, g_col, res_row, res_col, mask, beta2, every, hyper: StepScalars | None = None):
    return backend(g).residual_stats(g, x, y, g_row, g_col, res_row, res_col, mask, beta2, every, hyper)


def finite_gather(checks, copies=(), keep=None):
    """Copy each ``(src, dst)`` of ``copies``; a 0-d device bool: is every value of ``checks`` and the sources
    finite? (``keep``: a list the kernel appends the tables it reads to, for a CUDA graph of the call.)"""
    first = next(iter(checks), None)
    if first is None and copies:
        first = copies[0][0]
    if first is None:
        return None
    return backend(first).finite_gather(checks, copies, keep)


def complement_update(m, xu, yu, xm, ym, row, col, g_row, mask, bc1, bc2, eps, **apply):
    return backend(m).complement_update(m, xu, yu, xm, ym, row, col, g_row, mask, bc1, bc2, eps, **apply)
