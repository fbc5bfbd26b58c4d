"""Triton implementations of the fused steps, one file per kernel, re-exported for the dispatch.

Same names, signatures and in-place behaviour as :mod:`scao_dist.kernels.reference`; operands the
kernels do not cover (other dtypes, odd broadcasts) fall back to the reference, so every call is
drop-in. Set ``common.POISON_OUTPUTS`` (or ``SCAO_POISON_OUTPUTS=1``) to NaN-fill returned tensors.
"""

from __future__ import annotations

from .adamw import adamw_
from .apply import apply_update_
from .factor import factor_ema_corr_
from .finite import finite_gather
from .lowrank import complement_update, residual_stats, residual_sumsq
from .moments import ema_signed_, rotated_adam_

__all__ = [
    "adamw_",
    "apply_update_",
    "complement_update",
    "ema_signed_",
    "factor_ema_corr_",
    "finite_gather",
    "residual_stats",
    "residual_sumsq",
    "rotated_adam_",
]
