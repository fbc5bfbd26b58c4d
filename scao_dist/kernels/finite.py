"""The step's NaN/inf check and the gradients' gather into group buffers, in one pass: ``finite_gather``.

A step is skipped whole when any gradient holds a NaN or inf, so before anything writes state the
step reads every gradient once to check it. The gradients of column-split weights (a 2048 x 8192
weight cut into two 2048 x 4096 blocks) are not rows of their group's stacked buffer, so the step
also copies them in, reading them a second time. Here each value is read once for both: the
check's pass writes the copies.

Every tensor is a *segment*: a matrix of ``R`` rows of ``C`` values, ``S`` values apart (a
contiguous tensor is its rows of its last dimension; a column block is its rows inside the wider
weight), with an optional contiguous destination. One launch per dtype and alignment covers all the
segments of that kind: program ``p`` takes tile ``p - first[s]`` of the last segment ``s`` with
``first[s] <= p``, a [BR, BC] tile, checks ``|x| <= FLT_MAX`` (false for NaN and inf) and stores 0
into the flag if a value fails, and writes the tile to the destination. The flag is a byte that
starts at 1 and is returned as a 0-d bool; no atomics (every writer writes 0), the result does not
depend on the order.

Segment tables (addresses, sizes, first tiles: 8 values per segment) are built on the host once per
set of tensors and kept (:data:`_TABLES`), so a captured check reads them from the device and a step
with the same tensors uploads nothing; a new set costs one small copy through pinned memory.
A copy may widen bf16 or fp16 into fp32 (exact, as ``copy_``: the bf16 gradients of a group that keeps fp32
buffers). Tensors the kernel does not take (other dtypes, a last dimension that is not contiguous, copies
that narrow) go through the twin, :func:`.reference.finite_gather`, whose flag is combined.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import reference
from .common import FMAX

BR = 8
"""Rows per tile."""
BC = 1024
"""Values per tile row (8 x 1024 = 8192 values, 16 KB of bf16, per program)."""
WARPS = 8
"""Warps per program (64 values per thread, in 16-byte loads when the segment is aligned)."""

DTYPES = (torch.bfloat16, torch.float16, torch.float32)
"""The dtypes the kernel reads (floats of 2 and 4 bytes); copies keep the dtype or widen to fp32."""

SEG: tl.constexpr = tl.constexpr(8)
"""int64 values per segment row: source address, destination address (0: none), R, C, S, tiles per
row, first tile (offset 6), unused."""


@triton.jit
def _finite_gather_kernel(seg_ptr, nseg, flag_ptr, like_ptr, out_like_ptr, BR: tl.constexpr, BC: tl.constexpr,
                          ALIGNED: tl.constexpr, VEC: tl.constexpr):  # fmt: skip
    """One [BR, BC] tile of one segment (module docstring). ``like_ptr`` / ``out_like_ptr``: any pointers of the
    sources' and the destinations' element types (the same, or fp32 for a widening copy). ``ALIGNED``: every
    address, ``S`` and ``C`` are multiples of ``VEC`` values (16 bytes of a source)."""
    pid = tl.program_id(0)
    s = 0  # the last segment whose first tile is at or before this one (a scan of a few dozen cached values)
    for k in range(1, nseg):
        s = tl.where(pid >= tl.load(seg_ptr + k * SEG + 6), k, s)
    row = seg_ptr + s.to(tl.int64) * SEG
    src = tl.load(row).to(tl.pointer_type(like_ptr.dtype.element_ty))
    dst_addr = tl.load(row + 1)
    R = tl.load(row + 2)
    C = tl.load(row + 3)
    S = tl.load(row + 4)
    ntc = tl.load(row + 5)
    t = pid - tl.load(row + 6)
    if ALIGNED:
        src = tl.multiple_of(src, 16)
        C = tl.multiple_of(C, VEC)
        S = tl.multiple_of(S, VEC)
    tr = t // ntc
    r = tr * BR + tl.arange(0, BR)
    c = (t - tr * ntc) * BC + tl.arange(0, BC)
    mask = (r < R)[:, None] & (c < C)[None, :]
    x = tl.load(src + (r[:, None] * S + c[None, :]), mask=mask, other=0.0)
    ok = tl.abs(x.to(tl.float32)) <= FMAX  # (False for NaN and for +-inf)
    bad = tl.sum(tl.sum(tl.where(ok, 0, 1), axis=1), axis=0)
    if bad > 0:
        tl.store(flag_ptr, 0)
    if dst_addr != 0:
        dst = dst_addr.to(tl.pointer_type(out_like_ptr.dtype.element_ty))
        if ALIGNED:
            dst = tl.multiple_of(dst, 16)
        tl.store(dst + (r[:, None] * C + c[None, :]), x.to(out_like_ptr.dtype.element_ty), mask=mask)


def _segment(src: Tensor, dst: Tensor | None) -> tuple[int, int, int] | None:
    """``(R, C, S)`` of ``src`` as a matrix of rows with unit stride (``dst``, if any, contiguous, of the same
    shape, and of the same dtype or fp32 from a 2-byte float); ``None`` if the kernel does not take it."""
    if src.dtype not in DTYPES or src.numel() == 0:
        return None
    if dst is not None and (
        dst.dtype not in (src.dtype, torch.float32)
        or dst.shape != src.shape
        or dst.device != src.device
        or not dst.is_contiguous()
    ):
        return None
    if src.is_contiguous():
        c = src.shape[-1] if src.dim() else 1
        return src.numel() // c, c, c
    if src.dim() == 2 and src.stride(1) == 1 and src.stride(0) >= src.shape[1]:
        return src.shape[0], src.shape[1], src.stride(0)
    return None


_TABLES: dict[tuple, list[tuple[Tensor, Tensor, Tensor, int, bool, int, Tensor]]] = {}
"""Segment tables per tile shape and set of tensors (addresses, shapes, strides, dtypes): a few sets at most."""


def _tables(segs: list[tuple[Tensor, Tensor | None, tuple[int, int, int]]], key: tuple) -> list:
    """``(like, out like, seg table, segments, aligned, tiles, host copy)`` per launch: segments grouped by their
    source's and destination's dtypes and alignment (the pinned host copy kept until the table's upload is surely
    done: as long as the table)."""
    out = _TABLES.get(key)
    if out is not None:
        return out
    kinds: dict[tuple[torch.dtype, torch.dtype, bool], list] = {}
    for src, dst, (R, C, S) in segs:
        vec = 16 // src.element_size()
        ptrs = [src.data_ptr()] + ([dst.data_ptr()] if dst is not None else [])
        aligned = all(p % 16 == 0 for p in ptrs) and C % vec == 0 and S % vec == 0
        kinds.setdefault((src.dtype, (dst if dst is not None else src).dtype, aligned), []).append((src, dst, R, C, S))
    out = []
    for (_, _, aligned), items in kinds.items():
        rows, first = [], 0
        for src, dst, R, C, S in items:
            ntc = triton.cdiv(C, BC)
            rows.append([src.data_ptr(), dst.data_ptr() if dst is not None else 0, R, C, S, ntc, first, 0])  # SEG
            first += triton.cdiv(R, BR) * ntc
        dev = items[0][0].device
        host = torch.tensor(rows, dtype=torch.int64, pin_memory=dev.type == "cuda")
        seg = host.to(dev, non_blocking=True)
        out_like = next((dst for _, dst, *_ in items if dst is not None), items[0][0])
        out.append((items[0][0], out_like, seg, len(rows), aligned, first, host))
    if len(_TABLES) >= 8:
        _TABLES.clear()
    _TABLES[key] = out
    return out


def finite_gather(
    checks: Sequence[Tensor], copies: Sequence[tuple[Tensor, Tensor]], keep: list | None = None
) -> Tensor | None:
    """:func:`.reference.finite_gather` in one pass per dtype (module docstring): copies ``src`` into
    ``dst`` for every pair of ``copies``; returns a 0-d device bool, True iff every value of ``checks``
    and of the sources is finite (``None`` when there is nothing to check). ``keep``: a list the segment
    tables are appended to (a CUDA graph of this call must keep them alive; the cache may drop them)."""
    segs, rest_checks, rest_copies = [], [], []
    for t in checks:
        rc = _segment(t, None)
        (segs.append((t, None, rc)) if rc is not None else rest_checks.append(t))
    for src, dst in copies:
        rc = _segment(src, dst)
        (segs.append((src, dst, rc)) if rc is not None else rest_copies.append((src, dst)))
    flag = None
    if segs:
        key = (BR, BC, *((s.data_ptr(), s.shape, s.stride(), s.dtype, *((d.data_ptr(), d.dtype) if d is not None
                          else (0, None))) for s, d, _ in segs))  # fmt: skip
        byte = torch.ones((), dtype=torch.uint8, device=segs[0][0].device)
        tables = _tables(segs, key)
        if keep is not None:
            keep.append(tables)
        for like, out_like, seg, nseg, aligned, tiles, _ in tables:
            vec = 16 // like.element_size()
            _finite_gather_kernel[(tiles,)](seg, nseg, byte, like, out_like, BR=BR, BC=BC, ALIGNED=aligned, VEC=vec,
                                            num_warps=WARPS)  # fmt: skip
        flag = byte.view(torch.bool)
    if rest_checks or rest_copies:
        more = reference.finite_gather(rest_checks, rest_copies)
        if more is not None:
            flag = more if flag is None else flag & more
    return flag
