"""Fused factor EMA ``factor_ema_``: ``L <- beta L + (1-beta) A`` on a per-row int8 factor.

One program owns ``BR`` whole rows of the stacked (B, d, d) factors (a [BR, BD] tile with
BD >= d), so the new row absmax and the dithered re-encode happen in registers: codes, amax and
``A`` are read once, codes and amax written once. Rows longer than :data:`MAX_BD` take two sweeps
(absmax, then encode), recomputing the row instead of storing it. Twin: :func:`.reference.factor_ema_`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import reference
from .common import INV127, LAUNCH, rint, writable, write_back

MAX_BD = 4096
"""Longest row held in one tile."""
TILE = 4096
"""Values per program (BR rows x BD columns)."""


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
def _row_values(codes_ptr, outer_ptr, base, cols, mask, st, beta, omb):
    """f = (q · amax/127)·beta + A·(1-beta) on a tile (0 outside the mask)."""
    q = tl.load(codes_ptr + base + cols, mask=mask, other=0).to(tl.float32)
    a = tl.load(outer_ptr + base + cols, mask=mask, other=0.0)
    return tl.where(mask, (q * st) * beta + a * omb, 0.0)


@triton.jit
def _encode_store(codes_ptr, base, cols, mask, f, step, i, j, d, seed):
    """q = clamp(floor(f/step + u), ±127), u = hash(i·d + j, seed): the unbiased dithered rounding."""
    t = tl.math.div_rn(f, step) + hash_uniform(i * d + j, seed)
    r = rint(t)  # floor(t) = rint(t) - [rint(t) > t]; tl.floor is cvt.rmi.ftz on NVIDIA (-2^-130 -> 0, not -1)
    q = r - tl.where(r > t, 1.0, 0.0)
    q = tl.minimum(tl.maximum(q, -127.0), 127.0)
    tl.store(codes_ptr + base + cols, q.to(tl.int8), mask=mask)


@triton.jit
def _factor_ema_kernel(
    codes_ptr, amax_ptr, outer_ptr, seed_ptr, d, rows, beta, omb,
    BR: tl.constexpr, BD: tl.constexpr, NCH: tl.constexpr,
):  # fmt: skip
    r32 = tl.program_id(0) * BR + tl.arange(0, BR)  # global row = b·d + i
    rmask = r32 < rows
    b = r32 // d
    i = (r32 - b * d).to(tl.uint32)[:, None]
    seed = tl.load(seed_ptr + b, mask=rmask, other=0).to(tl.uint32)[:, None]
    st = (tl.load(amax_ptr + r32, mask=rmask, other=0.0) * INV127)[:, None]
    base = (r32.to(tl.int64) * d)[:, None]
    cols = tl.arange(0, BD)[None, :]
    if NCH == 1:  # the whole row is in the tile: one pass
        mask = rmask[:, None] & (cols < d)
        f = _row_values(codes_ptr, outer_ptr, base, cols, mask, st, beta, omb)
        amax = tl.max(tl.abs(f), axis=1)
        step = (tl.where(amax > 0, amax, 1.0) * INV127)[:, None]
        _encode_store(codes_ptr, base, cols, mask, f, step, i, cols.to(tl.uint32), d, seed)
    else:  # long rows: absmax sweep, then encode sweep (recomputing f, bit-identical)
        amax = tl.zeros([BR], dtype=tl.float32)
        for k in range(NCH):
            c = cols + k * BD
            mask = rmask[:, None] & (c < d)
            f = _row_values(codes_ptr, outer_ptr, base, c, mask, st, beta, omb)
            amax = tl.maximum(amax, tl.max(tl.abs(f), axis=1))
        step = (tl.where(amax > 0, amax, 1.0) * INV127)[:, None]
        for k in range(NCH):
            c = cols + k * BD
            mask = rmask[:, None] & (c < d)
            f = _row_values(codes_ptr, outer_ptr, base, c, mask, st, beta, omb)
            _encode_store(codes_ptr, base, c, mask, f, step, i, c.to(tl.uint32), d, seed)
    tl.store(amax_ptr + r32, amax, mask=rmask)


def factor_ema_(
    codes: torch.Tensor, amax: torch.Tensor, outer: torch.Tensor, beta: float, seed: torch.Tensor | int
) -> None:
    """Triton twin of :func:`.reference.factor_ema_` (same signature, in place)."""
    ok = (
        outer.dim() >= 2
        and outer.shape[-1] == outer.shape[-2]
        and outer.dtype == torch.float32
        and codes.dtype == torch.int8
        and amax.dtype == torch.float32
        and codes.shape == outer.shape
        and amax.shape == outer.shape[:-1]
        and codes.device == outer.device == amax.device
        and isinstance(beta, float | int)
    )
    lead = tuple(outer.shape[:-2])
    seeds = torch.as_tensor(seed, dtype=torch.int64, device=outer.device) if ok else None
    if ok:
        try:
            seeds = torch.broadcast_to(seeds, lead).reshape(-1).contiguous()
        except RuntimeError:
            ok = False
    if not ok:
        return reference.factor_ema_(codes, amax, outer, beta, seed)
    d = outer.shape[-1]
    rows = outer.numel() // d if d else 0
    if rows == 0:
        return None
    BD = min(max(triton.next_power_of_2(d), 16), MAX_BD)
    BR = max(1, TILE // BD)
    c, a = writable(codes), writable(amax)
    grid = (triton.cdiv(rows, BR),)
    _factor_ema_kernel[grid](
        c, a, outer.contiguous(), seeds, d, rows, float(beta), 1.0 - beta,
        BR=BR, BD=BD, NCH=triton.cdiv(d, BD), **LAUNCH,
    )  # fmt: skip
    write_back(codes, c)
    write_back(amax, a)
    return None
