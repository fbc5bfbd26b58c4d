"""Fused factor EMA ``factor_ema_corr_``: ``L <- beta L + (1-beta) A`` on an int8 correlation factor.

The factor is stored as int8 correlation codes ``C`` plus its exact fp32 diagonal (``quant.encode_corr``).
The new diagonal depends only on the old diagonal and ``A_ii``, and every new code needs
``1/sqrt`` of the new diagonal at both its row and its column, so the update is two launches,
each batched over all stacked factors:

1. :func:`_factor_diag_kernel`, one value per row ``b·d + i`` (tiny): ``f_ii = diag_i·beta +
   A_ii·(1-beta)`` (``decode_corr`` puts the old diagonal back exactly, so the decoded ``L_ii`` is
   ``diag_i``), the new diagonal ``max(f_ii, 0)`` written in place, and into a (3, B·d) scratch:
   ``sqrt(diag_i)`` (the decode scale), ``1/sqrt(new diag_i)`` (the encode scale, 0 where the
   new diagonal is 0) and ``f_ii`` itself (the value the diagonal code is encoded from).
2. :func:`_factor_corr_kernel`, one [BI, BJ] tile of one factor per program: decode the old code
   ``((q/127)·r_i)·r_j``, ``f = ·beta + A·(1-beta)`` (``f_ii`` from the scratch on the diagonal),
   ``c = (f·inv_i)·inv_j``, and store ``clamp(floor(127c + u), ±127)`` with the hash dither
   ``u = hash(i·d + j, seed_b)``. Codes and ``A`` are read once and the codes written once.

Same fp32 operations in the same order as the twin :func:`.reference.factor_ema_corr_`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import reference
from .common import INV127, LAUNCH, floor_clamp, gate_shut, hyper_row, new_output, tile_coords, writable, write_back
from .scalars import StepScalars

MAX_BJ = 128
"""Columns per tile (a power of two; fewer when d is smaller)."""
TILE = 4096
"""Values per program of the tiled pass (BI rows x BJ columns)."""
DIAG_BLOCK = 1024
"""Rows per program of the diagonal pass."""


@triton.jit
def hash_uniform(idx, seed):
    """``quant.hash_uniform`` in uint32 arithmetic (the int64 twin masks to 32 bits at each step)."""
    x = idx * 0x2C1B3C6D + seed * 0x297A2D39 + 0x68E31DA4
    x = x ^ (x >> 16)
    x = x * 0x5BD1E995
    x = x ^ (x >> 15)
    x = x * 0x27D4EB2F
    x = x ^ (x >> 16)
    return (x >> 8).to(tl.float32) * (1.0 / 16777216.0)


@triton.jit
def _factor_diag_kernel(
    diag_ptr, outer_ptr, tmp_ptr, hp_ptr, d, rows, beta, omb, BLOCK: tl.constexpr, HP_DEV: tl.constexpr
):  # fmt: skip
    """Per row r = b·d + i: f = diag·beta + A_ii·(1-beta); diag <- max(f, 0) (torch's clamp_min:
    -0 and NaN kept); tmp[0, r] = sqrt(old diag), tmp[1, r] = 1/sqrt(new diag) (0 for 0), tmp[2, r] = f.
    ``HP_DEV``: nothing written when the step scalars' gate at ``hp_ptr`` is shut."""
    if HP_DEV:  # noqa: SIM102 (the row is read only when there is one)
        if gate_shut(hp_ptr):
            return
    r32 = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = r32 < rows
    i = r32 - (r32 // d) * d
    r = r32.to(tl.int64)
    old = tl.load(diag_ptr + r, mask=mask, other=0.0)
    a = tl.load(outer_ptr + r * d + i, mask=mask, other=0.0)  # A[b, i, i] at (b·d + i)·d + i
    f = old * beta + a * omb
    new = tl.where(f < 0.0, 0.0, f)
    pos = new > 0.0
    inv = tl.where(pos, tl.math.div_rn(tl.full([BLOCK], 1.0, tl.float32), tl.sqrt_rn(tl.where(pos, new, 1.0))), 0.0)
    tl.store(diag_ptr + r, new, mask=mask)
    tl.store(tmp_ptr + r, tl.sqrt_rn(old), mask=mask)
    tl.store(tmp_ptr + rows + r, inv, mask=mask)
    tl.store(tmp_ptr + 2 * rows + r, f, mask=mask)


@triton.jit
def _factor_corr_kernel(
    codes_ptr, outer_ptr, tmp_ptr, seed_ptr, hp_ptr, d, rows, nti, ntj, beta, omb,
    BI: tl.constexpr, BJ: tl.constexpr, HP_DEV: tl.constexpr,
):  # fmt: skip
    """One [BI, BJ] tile (rows ti·BI.., columns tj·BJ..) of factor b: decode, EMA, re-encode the codes
    (nothing when ``HP_DEV`` and the gate is shut)."""
    if HP_DEV:  # noqa: SIM102 (the row is read only when there is one)
        if gate_shut(hp_ptr):
            return
    b, i, j = tile_coords(tl.program_id(0), nti, ntj, BI, BJ)
    mi, mj = i < d, j < d
    ri_off = b.to(tl.int64) * d + i  # row b·d + i of the (B·d) per-row vectors
    rj_off = b.to(tl.int64) * d + j
    r_i = tl.load(tmp_ptr + ri_off, mask=mi, other=0.0)[:, None]
    r_j = tl.load(tmp_ptr + rj_off, mask=mj, other=0.0)[None, :]
    inv_i = tl.load(tmp_ptr + rows + ri_off, mask=mi, other=0.0)[:, None]
    inv_j = tl.load(tmp_ptr + rows + rj_off, mask=mj, other=0.0)[None, :]
    f_ii = tl.load(tmp_ptr + 2 * rows + ri_off, mask=mi, other=0.0)[:, None]
    seed = tl.load(seed_ptr + b).to(tl.uint32)
    off = ri_off[:, None] * d + j[None, :]
    mask = mi[:, None] & mj[None, :]
    q = tl.load(codes_ptr + off, mask=mask, other=0).to(tl.float32)
    a = tl.load(outer_ptr + off, mask=mask, other=0.0)
    f = ((q * INV127) * r_i) * r_j
    f = f * beta + a * omb
    f = tl.where(i[:, None] == j[None, :], f_ii, f)  # decode_corr restores the old diagonal exactly
    c = (f * inv_i) * inv_j
    u = hash_uniform(i.to(tl.uint32)[:, None] * d + j.to(tl.uint32)[None, :], seed)
    qn = floor_clamp(c * 127.0 + u, 127)
    tl.store(codes_ptr + off, qn.to(tl.int8), mask=mask)


def factor_ema_corr_(
    codes: torch.Tensor,
    diag: torch.Tensor,
    outer: torch.Tensor,
    beta: float,
    seed: torch.Tensor | int,
    hyper: StepScalars | None = None,
) -> None:
    """Triton twin of :func:`.reference.factor_ema_corr_` (same signature, in place)."""
    hp = hyper_row(hyper, outer.device, outer)
    ok = (
        outer.dim() >= 2
        and outer.shape[-1] == outer.shape[-2]
        and outer.dtype == torch.float32
        and codes.dtype == torch.int8
        and diag.dtype == torch.float32
        and codes.shape == outer.shape
        and diag.shape == outer.shape[:-1]
        and codes.device == outer.device == diag.device
        and isinstance(beta, float | int)
        and hp is not None
    )
    lead = tuple(outer.shape[:-2])
    seeds = None
    if ok:
        try:
            seeds = torch.as_tensor(seed, dtype=torch.int64, device=outer.device)
            seeds = torch.broadcast_to(seeds, lead).reshape(-1).contiguous()
        except (RuntimeError, TypeError):
            ok = False
    if not ok:
        return reference.factor_ema_corr_(codes, diag, outer, beta, seed, hyper=hyper)
    d = outer.shape[-1]
    rows = outer.numel() // d if d else 0
    if rows == 0:
        return None
    c, dg = writable(codes), writable(diag)
    o = outer.contiguous()
    tmp = new_output((3, rows), outer.device)
    beta_f, omb = float(beta), 1.0 - beta
    gated = hyper is not None
    _factor_diag_kernel[(triton.cdiv(rows, DIAG_BLOCK),)](
        dg, o, tmp, hp, d, rows, beta_f, omb, BLOCK=DIAG_BLOCK, HP_DEV=gated, **LAUNCH
    )
    BJ = min(max(triton.next_power_of_2(d), 16), MAX_BJ)
    BI = max(1, min(TILE // BJ, triton.next_power_of_2(d)))
    nti, ntj = triton.cdiv(d, BI), triton.cdiv(d, BJ)
    grid = ((rows // d) * nti * ntj,)
    _factor_corr_kernel[grid](
        c, o, tmp, seeds, hp, d, rows, nti, ntj, beta_f, omb, BI=BI, BJ=BJ, HP_DEV=gated, **LAUNCH
    )
    write_back(codes, c)
    write_back(diag, dg)
    return None
