"""Fused elementwise tail of the truncated-basis complement ``complement_add_`` (``groups.KronGroup._with_complement``).

Per stacked block ``b`` of a (B, m, n) group, Adam on what a truncated basis misses, with the
factored (Adafactor-style) second moment of the residual gradient::

    u_ij += ((m_ij - back_ij) / (sqrt(max(row_i * cs_j, floor) / bc2) + eps)) * scale

The per-block vectors ``cs = col / max(mean(row), 1e-30)`` (B, n), ``floor = RES_FLOOR^2
mean(g_row)`` (B,) and ``scale = mask / bc1`` (B,) are O(m + n) and are computed on the host
side in torch, by the very function the twin uses (:func:`.reference.complement_vectors`), so
they are the twin's bits. The kernel then reads ``u``, ``back_m`` and ``m`` once and writes ``u``
once: one program per [BM, BN] tile of one block (the row vector and ``cs`` slice loaded once per
tile), all blocks in one launch. Unlike the twin it leaves ``back_m`` as it was.

Same fp32 operations in the same order as :func:`.reference.complement_add_` (IEEE division and
square root, no FMA, NaN-propagating maximum, every masked block written too: ``u + 0·x`` turns
``-0`` into ``+0`` and keeps a NaN, as the twin does).
"""

from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

from . import reference
from .common import LAUNCH, tile_coords, writable, write_back

MAX_BN = 256
"""Columns per tile (a power of two; fewer when n is smaller)."""
TILE = 4096
"""Values per program (BM rows x BN columns)."""


@triton.jit
def _complement_kernel(
    u_ptr, back_ptr, m_ptr, row_ptr, cs_ptr, floor_ptr, scale_ptr, bc2_ptr,
    M, N, ntm, ntn, bc2, eps,
    BM: tl.constexpr, BN: tl.constexpr, BC2_ROWS: tl.constexpr,
):  # fmt: skip
    """One [BM, BN] tile (rows tm·BM.., columns tn·BN..) of block b:
    u += ((m - back) / (sqrt(max(row_i·cs_j, floor_b) / bc2) + eps)) · scale_b."""
    b, i, j = tile_coords(tl.program_id(0), ntm, ntn, BM, BN)
    mi, mj = i < M, j < N
    b64 = b.to(tl.int64)
    r_i = tl.load(row_ptr + b64 * M + i, mask=mi, other=0.0)[:, None]
    c_j = tl.load(cs_ptr + b64 * N + j, mask=mj, other=0.0)[None, :]
    floor = tl.load(floor_ptr + b)
    scale = tl.load(scale_ptr + b)
    if BC2_ROWS:
        bc2 = tl.load(bc2_ptr + b)
    off = (b64 * M + i)[:, None] * N + j[None, :]
    mask = mi[:, None] & mj[None, :]
    u = tl.load(u_ptr + off, mask=mask, other=0.0)
    bm = tl.load(back_ptr + off, mask=mask, other=0.0)
    m = tl.load(m_ptr + off, mask=mask, other=0.0)
    r = m - bm  # == (-bm) + m, the twin's spelling, bit for bit (signed zeros included)
    v = tl.maximum(r_i * c_j, floor, propagate_nan=tl.PropagateNan.ALL)
    d = tl.sqrt_rn(tl.math.div_rn(v, bc2)) + eps
    tl.store(u_ptr + off, u + tl.math.div_rn(r, d) * scale, mask=mask)


def _f32(x: float) -> float:
    """``x`` rounded to fp32 (as the twin's 0-d fp32 tensor / torch's scalar cast), so the kernel's fp32
    scalar argument takes it exactly."""
    return float(np.float32(x))


def _per_block(t: torch.Tensor, B: int, device: torch.device) -> torch.Tensor | None:
    """A (B,)-shaped contiguous fp32 view of a per-block value (shape broadcastable to (B, 1, 1)), else None."""
    if not isinstance(t, torch.Tensor) or t.dtype != torch.float32 or t.device != device:
        return None
    try:
        return torch.broadcast_to(t, (B, 1, 1)).reshape(B).contiguous()
    except RuntimeError:
        return None


def complement_add_(
    u: torch.Tensor,
    back_m: torch.Tensor,
    m: torch.Tensor,
    row: torch.Tensor,
    col: torch.Tensor,
    g_row: torch.Tensor,
    mask: torch.Tensor,
    bc1: torch.Tensor | float,
    bc2: torch.Tensor | float,
    eps: float,
) -> torch.Tensor:
    """Triton twin of :func:`.reference.complement_add_` (same signature, ``u`` in place, returns ``u``;
    ``back_m`` is left untouched)."""
    dev = u.device
    B, M, N = u.shape if u.dim() == 3 else (0, 0, 0)
    fp32 = (u, back_m, m, row, col, g_row)
    ok = (
        u.dim() == 3
        and all(t.dtype == torch.float32 and t.device == dev for t in fp32)
        and back_m.shape == m.shape == u.shape
        and row.shape == (B, M)
        and col.shape == (B, N)
        and g_row.dim() == 2
        and g_row.shape[0] == B
        and mask.shape == (B,)
        and mask.device == dev
        and isinstance(eps, float | int)
        and (isinstance(bc1, float | int) or _per_block(bc1, B, dev) is not None)
        and (isinstance(bc2, float | int) or _per_block(bc2, B, dev) is not None)
    )
    if not ok:
        return reference.complement_add_(u, back_m, m, row, col, g_row, mask, bc1, bc2, eps)
    cs, floor, scale = reference.complement_vectors(row, col, g_row, mask, bc1)
    if scale.dtype != torch.float32 or scale.shape != (B, 1, 1):  # e.g. a float64 mask or default dtype
        return reference.complement_add_(u, back_m, m, row, col, g_row, mask, bc1, bc2, eps)
    if u.numel() == 0:
        return u
    bc2_rows = _per_block(bc2, B, dev) if isinstance(bc2, torch.Tensor) else None
    bc2_f = 1.0 if bc2_rows is not None else _f32(bc2)
    ubuf = writable(u)
    BN = min(max(triton.next_power_of_2(N), 16), MAX_BN)
    BM = max(1, min(TILE // BN, triton.next_power_of_2(M)))
    ntm, ntn = triton.cdiv(M, BM), triton.cdiv(N, BN)
    _complement_kernel[(B * ntm * ntn,)](
        ubuf, back_m.contiguous(), m.contiguous(), row.contiguous(), cs.contiguous(), floor.contiguous(),
        scale.reshape(B).contiguous(), bc2_rows if bc2_rows is not None else floor,
        M, N, ntm, ntn, bc2_f, _f32(eps),
        BM=BM, BN=BN, BC2_ROWS=bc2_rows is not None, **LAUNCH,
    )  # fmt: skip
    write_back(u, ubuf)
    return u
