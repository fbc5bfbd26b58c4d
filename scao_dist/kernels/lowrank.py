"""Kernels that read a low-rank product ``X Y^T`` tile by tile instead of from memory.

With a truncated basis the step needs three full-size products of the basis with small cores
(``groups.KronGroup._with_complement``): the update ``U = Q_L U' Q_R^T`` and the projections of the
gradient and of the first moment, ``B_G`` and ``B_M``. Written out, each is an fp32 (B, m, n) tensor
written once and read at least once more, and the residual ``G - B_G`` a fourth: about 48 bytes per
weight per step, half of the whole step's traffic on the 405M GPT. Here each product is given as
``X`` (B, m, k) and ``Y`` (B, n, k) with ``k <= ~150``, and every [BM, BN] tile of it is formed in
registers (a ``tl.dot`` over ``k``, fp32 accumulation) where it is consumed:

* :func:`residual_sumsq`: one read of ``G`` (fp32, or the bf16 gradient of a frame-less group) gives
  the row and column sums of squares of ``G`` and of ``G - X Y^T``. Each program writes its tile's
  partial sums to its own slot; torch adds the slots (a fixed order: deterministic, no atomics).
* :func:`complement_update`: one read of ``M`` and one write give
  ``U = X_u Y_u^T + mask (M - X_m Y_m^T)/bc1 / max(sqrt(r_i c_j/bc2), sqrt(floor/bc2) + eps)``, the
  denominator's reciprocal as ``min(ia_i ib_j, fi)`` from per-row and per-column reciprocal roots
  (:func:`.reference.complement_reciprocals`, formed by :func:`_complement_prep_kernel`, one launch per
  call), the tail in the same fp32 operations and order as :func:`.reference.complement_add_` (no
  division, no FMA, NaN-propagating minimum).
  Given the weights it applies ``U`` to them at once (``x <- x (1 - lr wd) - lr U``,
  :func:`.apply.master_update` on bf16 weights and their correction bits), so ``U`` never reaches
  memory: ``M``, ``w`` and the bits are read once and the weights and bits written once. With
  ``hyper`` (:class:`.scalars.StepScalars`) the scale ``mask/bc1`` comes from the row
  (:func:`.reference.hyper_scale`), ``bc2`` too (in the reciprocals), and the kernel loads
  ``c = 1 - lr wd`` and ``lr`` from it.

The factors are fp32 or bf16. Two fp32 factors multiply on tensor cores in TF32 when torch's fp32
matmuls may (``torch.backends.cuda.matmul.allow_tf32``), else in full fp32 (``input_precision="ieee"``),
as the twin's ``torch.matmul`` does. A bf16 factor (a stored basis, ``Q_R`` or ``Q_L``) is read as
stored, at half the bytes, and its fp32 partner split into two bf16 terms (three without TF32), each
product exact (:func:`dot_chunk`): as fast as TF32, more precise. The twins (:mod:`.reference`) form
the products with ``torch.matmul`` of the exact fp32 values; the sums differ in order, so the two agree
within a tolerance, and bit for bit where the products are exact (:mod:`.verify`).
"""

from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

from . import reference
from .apply import correction_r, master_update, weights_ok
from .common import (
    HP_BC2,
    HP_C,
    HP_LR,
    INTERPRETED,
    LAUNCH,
    bf16_bits,
    bf16_to_f32,
    f32_to_bf16,
    gate_shut,
    hyper_row,
    new_output,
    writable,
    write_back,
)
from .scalars import StepScalars

BM = 64
"""Rows per tile."""
BN = 64
"""Columns per tile."""
BK = 16
"""Inner (rank) dimension per ``tl.dot`` of the residual sums (:data:`COMPLEMENT_BK`: the complement's). The
ranks are padded to a multiple of :data:`RANK_PAD` (16); a wider chunk masks its loads past the rank (whole
16-column steps), so no factor is copied for it (padding the ranks to 32 copied both factors of every product,
``session_zm``)."""
COMPLEMENT_BK = 16
COMPLEMENT_BK_BF16 = 32
"""The same for :func:`_complement_update_kernel`, with any fp32 factor and with all four bf16 (as the step's bf16
stream bases give): at K = 144 on an H200, 32 ran the all-bf16 applied complement in 0.250 against 0.282 ms and
every case with an fp32 factor slower (0.251 -> 0.420 ms applied with fp32 factors), 64 every case slower
(``session_qf``, BENCHMARKS.md §0s). In the 405M step 32 took the complement from 1940-1955 to 1685-1708 us a step
(``session_pc``, BENCHMARKS.md §0); re-swept there at 32 (``session_pe``), stages, warps, tiles and a register cap
kept their defaults."""
RANK_PAD: tl.constexpr = tl.constexpr(16)
"""The ranks' padding (:func:`_operands`): basis widths are multiples of 16 (``groups.Side.width_for``), so a
step pads nothing."""
SUMSQ_BM = 128
"""Rows per :func:`_sumsq_kernel` tile: 128x64 ran in 0.81x the time of 64x64 at rank 144 on an H200, fp32
and bf16 ``G`` alike (``bench.kernels --sweep``, ``session_zn``)."""
SUMSQ_BN = 128
"""Columns per :func:`_sumsq_kernel` tile: 128x128 ran ``residual_stats`` on a 2048x8192 bf16 ``G`` at rank 144
in 0.93x the time of 128x64 on an H200 (0.528 against 0.569 ms, ``session_zz2``). In the 405M step (blocks of
2048x4096 too) it is about even: the sums 0.99 -> 1.04 ms a step, the statistics over their half as many
column partials 0.175 -> 0.112 (``session_zz5``). The complement's tiles stay 64 wide (128 cost it 2%,
``session_zz``)."""
COMPLEMENT_WARPS = (8, 4)
"""Warps per :func:`_complement_update_kernel` program returning ``U`` and applying it: at rank 144 on
an H200, 8 warps ran the returning kernel in 0.96x the time of 4, and 4 the applying one (more
registers live: the weights and bits) in 0.90x the time of 8 (``session_zn``)."""


COMPLEMENT_STAGES: int | None = 4
"""Software-pipeline stages of :func:`_complement_update_kernel` (``None``: Triton's default, 3): with both
products plain bf16 ones (bf16 factors against a bf16 basis), 4 stages ran the applied kernel in 0.98x the
time of 3 on the bench case and the 405M step's complement in 2.28 against 2.43 ms (``session_yg``: 18
settings of tiles, warps and stages; 64x64 tiles at 4 warps stayed best)."""

SUMSQ_FROM_G = True
""":func:`_sumsq_kernel` accumulates the product onto ``-G`` (``X Y^T - G``, squared the same) instead of
subtracting it from ``G`` after the loop, so the tile of ``G`` is not held in registers across the product: the
405M step's sums 1066-1073 -> 925 us on an H200 (``session_tb``, BENCHMARKS.md §0p). The residual is then rounded
in the product's accumulation rather than once after it: exact wherever the sums are (the twins' exact cases)."""

COMPLEMENT_MAXNREG: int | None = None
SUMSQ_MAXNREG: int | None = None
"""Register caps (Triton's ``maxnreg``) of :func:`_complement_update_kernel` and :func:`_sumsq_kernel`
(``None``: the compiler's choice, 174 and 254 registers a thread on an H200: 2 programs per multiprocessor).
Both at 168 (3 programs) ran slower in the 405M step (complement 1969 -> 2004 us, sums 1053 -> 1121;
``session_ue``, BENCHMARKS.md §0o): the spills cost more than the occupancy bought."""


def _even(M: int, N: int, bm: int, bn: int) -> bool:
    """Do the [bm, bn] tiles divide an M x N block (then no tile load or store is masked)?"""
    return M % bm == 0 and N % bn == 0


def _sumsq_tiles(M: int, N: int) -> tuple[int, int]:
    """Tiles of :func:`_sumsq_kernel` along the rows and the columns (its partial sums' slots)."""
    return triton.cdiv(M, SUMSQ_BM), triton.cdiv(N, SUMSQ_BN)


BF16_MMA = tl.constexpr(not INTERPRETED)
"""Multiply bf16 chunks as bf16 (tensor cores). The Triton interpreter multiplies bf16 tiles wrongly
and rounds fp32 to bf16 by truncation (Triton 3.9): under it the pieces are rounded with
:func:`.common.f32_to_bf16` and multiplied as their exact fp32 values, the same products and sums."""


@triton.jit
def _bf16_piece(x):
    """``x`` rounded to bf16 (to nearest even): bf16 on the GPU, its exact fp32 value under the interpreter."""
    if BF16_MMA:  # (if/else: the branches' types differ, so no early return)
        piece = x.to(tl.bfloat16)
    else:
        piece = bf16_to_f32(f32_to_bf16(x))
    return piece


@triton.jit
def _mma(a, c, acc):
    """``acc + a c`` for chunks holding bf16 values: exact products, fp32 sums (:data:`BF16_MMA`)."""
    if BF16_MMA:
        acc = tl.dot(a, c, acc)
    else:
        acc = tl.dot(a.to(tl.float32), c.to(tl.float32), acc, input_precision="ieee")
    return acc


@triton.jit
def _split_bf16(x, PIECES: tl.constexpr):
    """fp32 ``x`` as ``PIECES`` (2 or 3) bf16 terms ``hi + mid (+ lo)``, each the rounded remainder of
    the ones before: 2 hold 16 significant bits (the rest under ``2^-17 |x|``), 3 all 24 of fp32."""
    hi = _bf16_piece(x)
    rest = x - hi.to(tl.float32)  # exact (the remainder of a rounding)
    mid = _bf16_piece(rest)
    lo = mid
    if PIECES == 3:
        lo = _bf16_piece(rest - mid.to(tl.float32))
    return hi, mid, lo


@triton.jit
def dot_chunk(a, c, acc, PREC: tl.constexpr):
    """``acc + a c`` for rank chunks ``a`` [BM, BK] and ``c`` [BK, BN], fp32 accumulation.

    fp32 x fp32: one ``tl.dot`` in ``PREC``. bf16 x bf16: one exact bf16 product. bf16 x fp32
    (either way round, a stored bf16 basis against an fp32 core): the fp32 chunk split into bf16
    terms (:func:`_split_bf16`: two under TF32, three under ``"ieee"``), each multiplied exactly
    against the bf16 one. Two bf16 products cost one TF32 product's tensor-core time and keep 16
    bits of the fp32 operand where TF32 keeps 11; the bf16 operand is read at half the bytes."""
    # (if/else throughout: Triton compiles the statements after a constexpr-true early return too)
    pieces: tl.constexpr = 3 if PREC == "ieee" else 2
    if a.dtype == tl.bfloat16 and c.dtype == tl.bfloat16:
        acc = _mma(a, c, acc)
    elif a.dtype == tl.bfloat16:
        acc = _mma_pieces(a, c, acc, pieces, False)
    elif c.dtype == tl.bfloat16:
        acc = _mma_pieces(c, a, acc, pieces, True)
    else:
        acc = tl.dot(a, c, acc, input_precision=PREC)
    return acc


@triton.jit
def _mma_pieces(b, x, acc, PIECES: tl.constexpr, X_LEFT: tl.constexpr):
    """``acc + x b`` (``X_LEFT``) or ``acc + b x`` for a bf16 chunk ``b`` and an fp32 chunk ``x`` taken as
    its ``PIECES`` bf16 terms (:func:`_split_bf16`), largest first."""
    hi, mid, lo = _split_bf16(x, PIECES)
    acc = _mma_side(hi, b, acc, X_LEFT)
    acc = _mma_side(mid, b, acc, X_LEFT)
    if PIECES == 3:
        acc = _mma_side(lo, b, acc, X_LEFT)
    return acc


@triton.jit
def _mma_side(x, b, acc, X_LEFT: tl.constexpr):
    if X_LEFT:
        acc = _mma(x, b, acc)
    else:
        acc = _mma(b, x, acc)
    return acc


@triton.jit
def _rows(ptr, b64, r, R, S):
    """Row pointers ``ptr[b, min(r, R - 1), :]`` of a (B, R, K) operand with row stride ``S`` (a slice
    of the last dim of a contiguous tensor); rows past ``R`` repeat the last (never kept)."""
    return ptr + (b64 * R + tl.minimum(r, R - 1)) * S


@triton.jit
def lowrank_tile(x_ptr, y_ptr, b64, i, j, M, N, K, SX, SY, BM: tl.constexpr, BN: tl.constexpr,
                 BK: tl.constexpr, PREC: tl.constexpr):  # fmt: skip
    """Rows ``i``, columns ``j`` of ``X_b Y_b^T`` for ``X`` (B, M, K), ``Y`` (B, N, K) of row strides ``SX``,
    ``SY``, each fp32 or bf16 (:func:`dot_chunk`), ``K`` a multiple of :data:`RANK_PAD` (:func:`_operand` pads
    the rank with zero columns; chunks wider than that are masked past ``K``, :func:`_rank_chunk`). Rows
    ``i >= M`` (columns ``j >= N``) repeat row ``M - 1`` (column ``N - 1``): the callers never keep them. So no
    load is masked along the rows or columns, which saves the per-element predicates (the kernels' integer
    work, ``session_zm``)."""
    return lowrank_acc(tl.zeros((BM, BN), dtype=tl.float32), x_ptr, y_ptr, b64, i, j, M, N, K, SX, SY, BK, PREC)


@triton.jit
def lowrank_acc(acc, x_ptr, y_ptr, b64, i, j, M, N, K, SX, SY, BK: tl.constexpr, PREC: tl.constexpr):
    """``acc + X_b Y_b^T`` on rows ``i``, columns ``j``, the products added into ``acc`` chunk by chunk
    (:func:`lowrank_tile`)."""
    xrow = _rows(x_ptr, b64, i, M, SX)[:, None]
    ycol = _rows(y_ptr, b64, j, N, SY)[None, :]
    for k0 in range(0, K, BK):
        kk = k0 + tl.arange(0, BK)
        acc = dot_chunk(_rank_chunk(xrow, kk, K, True), _rank_chunk(ycol, kk, K, False), acc, PREC)
    return acc


@triton.jit
def _rank_chunk(rows, kk, K, LEFT: tl.constexpr):
    """Rank columns ``kk`` of a factor's rows ``rows`` ([BM, BK] with ``LEFT``, else [BK, BN]): unmasked for
    chunks of :data:`RANK_PAD` (``K`` is a multiple), masked past ``K`` (zeros) for wider ones."""
    if LEFT:
        ptr = rows + kk[None, :]
        inside = (kk < K)[None, :]
    else:
        ptr = rows + kk[:, None]
        inside = (kk < K)[:, None]
    if kk.shape[0] > RANK_PAD:
        x = tl.load(ptr, mask=inside, other=0.0)
    else:
        x = tl.load(ptr)
    return x


@triton.jit
def lowrank_pair(xu_ptr, xm_ptr, y_ptr, b64, i, j, M, N, K, SXU, SXM, SY, BM: tl.constexpr, BN: tl.constexpr,
                 BK: tl.constexpr, PREC: tl.constexpr):  # fmt: skip
    """:func:`lowrank_tile` of ``X_u Y^T`` and ``X_m Y^T`` with one ``Y`` (both cores of a two-sided basis
    end in ``Q_R^T``): each chunk of ``Y`` is loaded once for both products."""
    acc_u = tl.zeros((BM, BN), dtype=tl.float32)
    acc_m = tl.zeros((BM, BN), dtype=tl.float32)
    urow = _rows(xu_ptr, b64, i, M, SXU)[:, None]
    mrow = _rows(xm_ptr, b64, i, M, SXM)[:, None]
    ycol = _rows(y_ptr, b64, j, N, SY)[None, :]
    for k0 in range(0, K, BK):
        kk = k0 + tl.arange(0, BK)
        c = _rank_chunk(ycol, kk, K, False)
        acc_u = dot_chunk(_rank_chunk(urow, kk, K, True), c, acc_u, PREC)
        acc_m = dot_chunk(_rank_chunk(mrow, kk, K, True), c, acc_m, PREC)
    return acc_u, acc_m


@triton.jit
def load_tile(ptr, mask, other, EVEN: tl.constexpr):
    """``tl.load`` of a tile, unmasked when ``EVEN`` (the tiles divide the block: every element is in)."""
    if EVEN:
        return tl.load(ptr)
    return tl.load(ptr, mask=mask, other=other)


@triton.jit
def store_tile(ptr, value, mask, EVEN: tl.constexpr):
    """``tl.store`` of a tile, unmasked when ``EVEN``."""
    if EVEN:
        tl.store(ptr, value)
    else:
        tl.store(ptr, value, mask=mask)


RANK_ARGS = ("K", "KU", "KM")
"""The kernels' rank arguments: multiples of :data:`RANK_PAD` (zero-padded by :func:`_operands`), never 1.
Triton compiles an integer argument equal to 1 in as a constant; the one-chunk loop is then
unrolled and ``u + dot(X, Y, 0)`` folded into ``dot(X, Y, u)``, so the tensor cores add the tail to
the product in their own rounding, not IEEE round-to-nearest (seen on an H200 at rank 1, before
the padding). ``do_not_specialize`` would avoid that too, but it also drops the divisible-by-16
hint and with it the vector loads along the rank: both kernels ran at half speed."""


@triton.jit
def _sumsq_kernel(
    g_ptr, x_ptr, y_ptr, grow_ptr, gcol_ptr, rrow_ptr, rcol_ptr,
    M, N, K, SX, SY, ntm, ntn,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, HAS_BACK: tl.constexpr, PREC: tl.constexpr,
    EVEN: tl.constexpr, FROM_G: tl.constexpr,
):  # fmt: skip
    """Tile (tm, tn) of block b: partial row sums of squares into slot tn of the (B, ntn, M) outputs,
    partial column sums into slot tm of the (B, ntm, N) outputs; of G, and of G - X Y^T (``FROM_G``: as
    ``X Y^T - G``, the product accumulated onto ``-G``)."""
    pid = tl.program_id(0)
    per = ntm * ntn
    b = pid // per
    t = pid - b * per
    tm = t // ntn
    tn = t - tm * ntn
    i = tm * BM + tl.arange(0, BM)
    j = tn * BN + tl.arange(0, BN)
    mi, mj = i < M, j < N
    b64 = b.to(tl.int64)
    inside = mi[:, None] & mj[None, :]
    g = load_tile(g_ptr + (b64 * M + i)[:, None] * N + j[None, :], inside, 0.0, EVEN)
    g = g.to(tl.float32)  # fp32 or bf16 G
    rows = (b64 * ntn + tn) * M + i
    cols = (b64 * ntm + tm) * N + j
    gg = g * g
    tl.store(grow_ptr + rows, tl.sum(gg, axis=1), mask=mi)
    tl.store(gcol_ptr + cols, tl.sum(gg, axis=0), mask=mj)
    if HAS_BACK and FROM_G:  # the product added to -G (its sign drops out of the squares): G dies here
        r = lowrank_acc(-g, x_ptr, y_ptr, b64, i, j, M, N, K, SX, SY, BK, PREC)
    elif HAS_BACK:  # (the sums of G first: the product before them ran 1.33x slower on an H200, session_xa)
        r = g - lowrank_tile(x_ptr, y_ptr, b64, i, j, M, N, K, SX, SY, BM, BN, BK, PREC)
    if HAS_BACK:
        if not EVEN:
            r = tl.where(inside, r, 0.0)  # the product's rows/columns past the block are copies, not zeros
        rr = r * r
        tl.store(rrow_ptr + rows, tl.sum(rr, axis=1), mask=mi)
        tl.store(rcol_ptr + cols, tl.sum(rr, axis=0), mask=mj)


@triton.jit
def _slot_sum(ptr, b64, nslot, L, k, mk):
    """Entries ``k`` of block ``b``'s partial sums ``ptr`` (B, nslot, L), added up over the slots in order."""
    acc = tl.zeros(k.shape, dtype=tl.float32)
    for t in range(0, nslot):
        acc += tl.load(ptr + (b64 * nslot + t) * L + k, mask=mk, other=0.0)
    return acc


@triton.jit
def _ema_slots(state_ptr, slots_ptr, b64, nslot, L, k, mk, beta2, a, keep, MASKED: tl.constexpr):
    """``state[b, k] <- state[b, k]·beta2 + (sum of the slots of entries k)·a``, unchanged where
    ``keep`` when ``MASKED``; returns (the new values, the slots' sum)."""
    ss = _slot_sum(slots_ptr, b64, nslot, L, k, mk)
    old = tl.load(state_ptr + b64 * L + k, mask=mk, other=0.0)
    new = old * beta2 + ss * a
    if MASKED:
        new = tl.where(keep, old, new)
    tl.store(state_ptr + b64 * L + k, new, mask=mk)
    return new, ss


@triton.jit(do_not_specialize=["M", "N", "ntm", "ntn", "nrc", "ncc"])
def _stats_kernel(
    grow_ptr, gcol_ptr, rrow_ptr, rcol_ptr, g_row_ptr, g_col_ptr, res_row_ptr, res_col_ptr, mask_ptr, part_ptr,
    hp_ptr, M, N, ntm, ntn, nrc, ncc, beta2, a_row, a_col,
    BLOCK: tl.constexpr, HAS_BACK: tl.constexpr, EVERY: tl.constexpr, HP_DEV: tl.constexpr,
):  # fmt: skip
    """Program (b, c): chunk c of block b's rows (c < nrc) or of its columns. Adds up
    :func:`_sumsq_kernel`'s per-tile partial sums (slots in order) and updates that chunk's
    statistics (see :func:`.reference.residual_stats`; ``a_row = (1-b2)/n``, ``a_col = (1-b2)/m``).
    A row chunk also writes its sums of ``rowsum(G^2)``, the new ``g_row`` and the new ``res_row``
    to ``part[b, c]`` for :func:`_stats_finish_kernel`. ``HP_DEV``: nothing at all when the step scalars'
    gate at ``hp_ptr`` is shut (what the finishing kernel then writes is never read: the step's other
    writes are shut too)."""
    if HP_DEV:  # noqa: SIM102 (the row is read only when there is one)
        if gate_shut(hp_ptr):
            return
    pid = tl.program_id(0)
    b = pid // (nrc + ncc)
    c = pid - b * (nrc + ncc)
    b64 = b.to(tl.int64)
    masked: tl.constexpr = HAS_BACK and not EVERY
    keep = False
    if masked:
        keep = tl.load(mask_ptr + b64) == 0  # a block without a complement keeps its residual statistics
    if c < nrc:
        i = c * BLOCK + tl.arange(0, BLOCK)
        mi = i < M
        new, ss = _ema_slots(g_row_ptr, grow_ptr, b64, ntn, M, i, mi, beta2, a_row, keep, False)
        pbase = part_ptr + (b64 * nrc + c) * 3
        tl.store(pbase, tl.sum(ss, axis=0))
        tl.store(pbase + 1, tl.sum(tl.where(mi, new, 0.0), axis=0))
        if HAS_BACK:
            newr, _ = _ema_slots(res_row_ptr, rrow_ptr, b64, ntn, M, i, mi, beta2, a_row, keep, masked)
            tl.store(pbase + 2, tl.sum(tl.where(mi, newr, 0.0), axis=0))
    else:
        j = (c - nrc) * BLOCK + tl.arange(0, BLOCK)
        mj = j < N
        _ema_slots(g_col_ptr, gcol_ptr, b64, ntm, N, j, mj, beta2, a_col, keep, False)
        if HAS_BACK:
            _ema_slots(res_col_ptr, rcol_ptr, b64, ntm, N, j, mj, beta2, a_col, keep, masked)


@triton.jit(do_not_specialize=["M", "N", "nrc", "ncc"])
def _stats_finish_kernel(
    part_ptr, res_col_ptr, sumsq_ptr, cs_ptr, floor_ptr, M, N, nrc, ncc, floor_c,
    BLOCK: tl.constexpr, PBLOCK: tl.constexpr, HAS_BACK: tl.constexpr,
):  # fmt: skip
    """Program (b, c): adds block b's row-chunk sums (in chunk order); chunk c = 0 writes ``||G||^2``
    and the floor ``floor_c mean(g_row)``; with the residual, column chunk c of
    ``cs = res_col / max(mean(res_row), 1e-30)``."""
    pid = tl.program_id(0)
    b = pid // ncc
    c = pid - b * ncc
    b64 = b.to(tl.int64)
    k = tl.arange(0, PBLOCK)
    acc_ss = tl.zeros((PBLOCK,), dtype=tl.float32)
    acc_g = tl.zeros((PBLOCK,), dtype=tl.float32)
    acc_r = tl.zeros((PBLOCK,), dtype=tl.float32)
    for p0 in range(0, nrc, PBLOCK):
        mk = p0 + k < nrc
        pbase = part_ptr + (b64 * nrc + p0 + k) * 3
        acc_ss += tl.load(pbase, mask=mk, other=0.0)
        if HAS_BACK:
            acc_g += tl.load(pbase + 1, mask=mk, other=0.0)
            acc_r += tl.load(pbase + 2, mask=mk, other=0.0)
    if c == 0:
        tl.store(sumsq_ptr + b64, tl.sum(acc_ss, axis=0))
    if HAS_BACK:
        mf = M.to(tl.float32)
        if c == 0:
            tl.store(floor_ptr + b64, floor_c * tl.math.div_rn(tl.sum(acc_g, axis=0), mf))
        mr = tl.maximum(tl.math.div_rn(tl.sum(acc_r, axis=0), mf), 1e-30)
        j = c * BLOCK + tl.arange(0, BLOCK)
        mj = j < N
        col = tl.load(res_col_ptr + b64 * N + j, mask=mj, other=0.0)
        tl.store(cs_ptr + b64 * N + j, tl.math.div_rn(col, mr), mask=mj)


@triton.jit
def _reciprocal_root(x, bc2, eps, DIV: tl.constexpr, EPS: tl.constexpr):
    """``1 / (sqrt(x / bc2) + eps)`` (without the division unless ``DIV``, without ``eps`` unless ``EPS``), each
    operation IEEE as the twin's torch ops."""
    if DIV:
        x = tl.math.div_rn(x, bc2)
    r = tl.sqrt_rn(x)
    if EPS:
        r = r + eps
    return tl.math.div_rn(tl.zeros_like(r) + 1.0, r)


@triton.jit
def _complement_prep_kernel(
    row_ptr, cs_ptr, floor_ptr, bc2_ptr, hp_ptr, ia_ptr, ib_ptr, fi_ptr, B, M, N, bc2, eps,
    BLOCK: tl.constexpr, BC2_BLOCKS: tl.constexpr, HP_DEV: tl.constexpr,
):  # fmt: skip
    """:func:`.reference.complement_reciprocals` in one launch: programs ``[0, nr)`` write ``ia`` (B·M rows),
    ``[nr, nr + nc)`` ``ib`` (B·N columns), the last ``fi`` (B). ``bc2``: the scalar, one per block
    (``BC2_BLOCKS``) or the step scalars' (``HP_DEV``)."""
    pid = tl.program_id(0)
    nr = tl.cdiv(B * M, BLOCK)
    nc = tl.cdiv(B * N, BLOCK)
    if HP_DEV:
        bc2 = tl.load(hp_ptr + HP_BC2)
    if pid < nr:
        k = pid * BLOCK + tl.arange(0, BLOCK)
        mk = k < B * M
        c2 = bc2
        if BC2_BLOCKS:
            c2 = tl.load(bc2_ptr + k // M, mask=mk, other=1.0)
        x = tl.load(row_ptr + k, mask=mk, other=1.0)
        tl.store(ia_ptr + k, _reciprocal_root(x, c2, eps, True, False), mask=mk)
    elif pid < nr + nc:
        k = (pid - nr) * BLOCK + tl.arange(0, BLOCK)
        mk = k < B * N
        x = tl.load(cs_ptr + k, mask=mk, other=1.0)
        tl.store(ib_ptr + k, _reciprocal_root(x, 1.0, eps, False, False), mask=mk)
    else:
        for k0 in range(0, B, BLOCK):
            k = k0 + tl.arange(0, BLOCK)
            mk = k < B
            c2 = bc2
            if BC2_BLOCKS:
                c2 = tl.load(bc2_ptr + k, mask=mk, other=1.0)
            x = tl.load(floor_ptr + k, mask=mk, other=1.0)
            tl.store(fi_ptr + k, _reciprocal_root(x, c2, eps, True, True), mask=mk)


@triton.jit
def _complement_update_kernel(
    out_ptr, m_ptr, xu_ptr, yu_ptr, xm_ptr, ym_ptr, ia_ptr, ib_ptr, fi_ptr, scale_ptr,
    rho_ptr, hp_ptr, wtab_ptr, M, N, KU, KM, SXU, SYU, SXM, SYM, LDW, ntm, ntn, c, lr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr,
    APPLY: tl.constexpr, R: tl.constexpr, HP_DEV: tl.constexpr, EVEN: tl.constexpr, SHARED_Y: tl.constexpr,
    WTAB: tl.constexpr,
):  # fmt: skip
    """Tile (tm, tn) of block b:
    U = X_u Y_u^T + ((m - X_m Y_m^T) min(ia_i ib_j, fi_b)) scale_b,
    stored in ``out`` (APPLY false) or applied to the weights ``out`` (and bits ``rho`` for R > 0).
    ``ia``, ``ib``, ``fi``: :func:`.reference.complement_reciprocals`, formed by :func:`_complement_prep_kernel`
    (forming them here per tile cost the kernel 0.15 ms a step at 405M, ``session_yj``). Both products run in one
    rank loop: forming ``X_m Y_m^T`` and its tail before ``X_u Y_u^T`` (one accumulator live, same registers) ran the
    bench case in 0.34 against 0.25 ms and the 405M step's complement in 2050 against 1722 us, persistent programs
    looping over tiles in 0.42-0.61 ms (``session_oa``, BENCHMARKS.md §0). ``HP_DEV``: ``c``
    and ``lr`` loaded from ``hp_ptr``; nothing written when its gate is shut.
    ``EVEN``: the tiles divide the block (no masks). ``SHARED_Y``: ``Y_u`` is ``Y_m`` (``ym_ptr``, ``SYM``
    unused; :func:`lowrank_pair`). ``WTAB``: block b's weights start at the
    address ``wtab_ptr[b]``, rows ``LDW`` apart (:class:`.reference.WeightBlocks`; ``out_ptr`` gives their type)."""
    if HP_DEV:  # (a shut gate: nothing written)
        if gate_shut(hp_ptr):
            return
        c = tl.load(hp_ptr + HP_C)
        lr = tl.load(hp_ptr + HP_LR)
    pid = tl.program_id(0)
    per = ntm * ntn
    b = pid // per
    t = pid - b * per
    tm = t // ntn
    i = tm * BM + tl.arange(0, BM)
    j = (t - tm * ntn) * BN + tl.arange(0, BN)
    mi, mj = i < M, j < N
    b64 = b.to(tl.int64)
    # every load of the tile first: they are in flight while the tensor cores form the products (the 405M step's
    # complement 2.10 -> 2.02 ms, session_xa)
    ia = tl.load(ia_ptr + b64 * M + i, mask=mi, other=0.0)[:, None]
    ib = tl.load(ib_ptr + b64 * N + j, mask=mj, other=0.0)[None, :]
    fi = tl.load(fi_ptr + b)
    scale = tl.load(scale_ptr + b)
    off = (b64 * M + i)[:, None] * N + j[None, :]
    mask = mi[:, None] & mj[None, :]
    m = load_tile(m_ptr + off, mask, 0.0, EVEN)  # fp32 or bf16 M
    if WTAB:  # the weights where they live (column blocks of wider weights)
        wbase = tl.load(wtab_ptr + b).to(tl.pointer_type(out_ptr.dtype.element_ty))
        wbase = tl.multiple_of(wbase, 16)  # WeightBlocks.of checks the addresses are 64-byte aligned: vector loads
        wp = wbase + (i[:, None] * LDW + j[None, :])
    else:
        wp = out_ptr + off
    w = m  # (the weights, and their bits when R > 0, once APPLY)
    rho = m
    if APPLY:
        w = load_tile(wp, mask, 0.0 if R == 0 else 0, EVEN)
        if R > 0:
            rho = load_tile(rho_ptr + off, mask, 0, EVEN)
    if SHARED_Y:
        u, bm = lowrank_pair(xu_ptr, xm_ptr, yu_ptr, b64, i, j, M, N, KU, SXU, SXM, SYU, BM, BN, BK, PREC)
    else:
        u = lowrank_tile(xu_ptr, yu_ptr, b64, i, j, M, N, KU, SXU, SYU, BM, BN, BK, PREC)
        bm = lowrank_tile(xm_ptr, ym_ptr, b64, i, j, M, N, KM, SXM, SYM, BM, BN, BK, PREC)
    r = m.to(tl.float32) - bm  # == (-bm) + m, the twin's spelling, bit for bit (signed zeros included)
    t = tl.minimum(ia * ib, fi, propagate_nan=tl.PropagateNan.ALL)
    u = u + (r * t) * scale
    if not APPLY:
        store_tile(out_ptr + off, u, mask, EVEN)
    elif R == 0:  # fp32 weights
        store_tile(wp, w * c - u * lr, mask, EVEN)
    else:
        nb, nr = master_update(w, rho.to(tl.float32), u, c, lr, R, False)  # (the long form: see its docstring)
        store_tile(wp, nb, mask, EVEN)
        store_tile(rho_ptr + off, nr.to(rho_ptr.dtype.element_ty), mask, EVEN)


PREP_BLOCK = 1024
"""Values per program of :func:`_complement_prep_kernel`."""


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


FACTOR_DTYPES = (torch.float32, torch.bfloat16)
"""Dtypes of the low-rank factors the kernels read (a stored bf16 basis is passed as it is stored)."""


def precision() -> str:
    """``tl.dot``'s input precision matching torch's fp32 matmuls now: TF32 where they may use it."""
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"


def _factors_ok(B: int, M: int, N: int, dev: torch.device, *pairs: tuple[torch.Tensor, torch.Tensor]) -> bool:
    """Every (X, Y) is fp32 or bf16 (:func:`dot_chunk`) on ``dev`` with shapes (B, M, k) and (B, N, k) and
    the same k."""
    for x, y in pairs:
        if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)):
            return False
        if x.dtype not in FACTOR_DTYPES or y.dtype not in FACTOR_DTYPES or x.device != dev or y.device != dev:
            return False
        if x.dim() != 3 or y.dim() != 3 or x.shape[:2] != (B, M) or y.shape[:2] != (B, N) or x.shape[2] != y.shape[2]:
            return False
    return True


def _sumsq_parts(g: torch.Tensor, x: torch.Tensor | None, y: torch.Tensor | None) -> list[torch.Tensor] | None:
    """:func:`_sumsq_kernel`'s per-tile partial sums ``[G rows (B, ntn, m), G columns (B, ntm, n)]``
    (then the residual's two, given ``X``, ``Y``); ``None`` for operands the kernel does not take."""
    back = x is not None and y is not None
    if g.dim() != 3 or g.dtype not in (torch.float32, torch.bfloat16):
        return None
    B, M, N = g.shape
    if back and not _factors_ok(B, M, N, g.device, (x, y)):
        return None
    dev = g.device
    ntm, ntn = _sumsq_tiles(M, N)
    shapes = [(B, ntn, M), (B, ntm, N)] * (2 if back else 1)  # per-tile partial sums: rows, columns (G, then R)
    parts = [new_output(s, dev) for s in shapes]
    if B * M * N:
        x_k, sx, y_k, sy, K = _operands(g, x, y) if back else (g, 0, g, 0, 0)
        _sumsq_kernel[(B * ntm * ntn,)](
            g.contiguous(), x_k, y_k, *parts[:2], *parts[2 if back else 0 :][:2],
            M, N, K, sx, sy, ntm, ntn,
            BM=SUMSQ_BM, BN=SUMSQ_BN, BK=BK, HAS_BACK=back, PREC=precision(), EVEN=_even(M, N, SUMSQ_BM, SUMSQ_BN),
            FROM_G=SUMSQ_FROM_G,
            **LAUNCH, **({"maxnreg": SUMSQ_MAXNREG} if SUMSQ_MAXNREG else {}),
        )  # fmt: skip
    return parts


def residual_sumsq(
    g: torch.Tensor, x: torch.Tensor | None = None, y: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Triton twin of :func:`.reference.residual_sumsq` (same signature and results)."""
    parts = _sumsq_parts(g, x, y)
    if parts is None:
        return reference.residual_sumsq(g, x, y)
    sums = [p.sum(1) for p in parts]  # a fixed order: deterministic
    return (sums[0], sums[1], sums[2], sums[3]) if len(sums) == 4 else (sums[0], sums[1], None, None)


STATS_BLOCK = 512
"""Rows or columns per program of :func:`_stats_kernel` (and columns per :func:`_stats_finish_kernel`)."""


def residual_stats(
    g: torch.Tensor,
    x: torch.Tensor | None,
    y: torch.Tensor | None,
    g_row: torch.Tensor,
    g_col: torch.Tensor,
    res_row: torch.Tensor,
    res_col: torch.Tensor,
    mask: torch.Tensor | None,
    beta2: float,
    every: bool,
    hyper: StepScalars | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Triton twin of :func:`.reference.residual_stats` (same signature and results; the sums in
    another order): three launches instead of some twenty small torch operations per group step."""
    args = (g, x, y, g_row, g_col, res_row, res_col, mask, beta2, every, hyper)
    back = x is not None and y is not None
    hp = hyper_row(hyper, g.device, g)
    if g.dim() != 3 or not isinstance(beta2, float | int) or hp is None:
        return reference.residual_stats(*args)
    B, M, N = g.shape
    dev = g.device
    states = ((g_row, (B, M)), (g_col, (B, N))) + (((res_row, (B, M)), (res_col, (B, N))) if back else ())
    if not all(t.dtype == torch.float32 and t.device == dev and tuple(t.shape) == sh for t, sh in states):
        return reference.residual_stats(*args)
    if (
        back
        and not every
        and not (
            isinstance(mask, torch.Tensor) and mask.dtype == torch.bool and mask.shape == (B,) and mask.device == dev
        )
    ):
        return reference.residual_stats(*args)
    parts = _sumsq_parts(g, x, y)
    if parts is None:
        return reference.residual_stats(*args)
    sumsq = new_output((B,), dev)
    cs = new_output((B, N), dev) if back else None
    floor = new_output((B,), dev) if back else None
    if B == 0:
        return sumsq, cs, floor
    bufs = [writable(t) for t, _ in states]
    rows = parts[2:] if back else parts[:2]  # stand-ins where there is no residual (never read)
    nrc, ncc = triton.cdiv(M, STATS_BLOCK), triton.cdiv(N, STATS_BLOCK)
    part = new_output((B, nrc, 3), dev)
    _stats_kernel[(B * (nrc + ncc),)](
        *parts[:2], *rows, *bufs[:2], *(bufs[2:] if back else bufs[:2]),
        mask.view(torch.uint8) if back and not every else part, part, hp,
        M, N, *_sumsq_tiles(M, N), nrc, ncc,
        _f32(beta2), _f32((1 - beta2) / N), _f32((1 - beta2) / M),
        BLOCK=STATS_BLOCK, HAS_BACK=back, EVERY=bool(every), HP_DEV=hyper is not None, **LAUNCH,
    )  # fmt: skip
    fin = ncc if back else 1
    _stats_finish_kernel[(B * fin,)](
        part, bufs[3] if back else part, sumsq, cs if back else sumsq, floor if back else sumsq,
        M, N, nrc, fin, _f32(reference.RES_FLOOR**2),
        BLOCK=STATS_BLOCK, PBLOCK=16, HAS_BACK=back, **LAUNCH,
    )  # fmt: skip
    for (t, _), buf in zip(states, bufs):
        write_back(t, buf)
    return sumsq, cs, floor


def _operand(t: torch.Tensor, k: int) -> tuple[torch.Tensor, int]:
    """A (B, R, k0) factor as the kernels read it, ``(tensor, row stride)``, its rank zero-padded to ``k``
    (a multiple of :data:`RANK_PAD`). A slice of the last dim of a contiguous tensor with ``k0 = k`` (a basis'
    first ``K`` columns, the probes after them) is read where it is, not copied."""
    B, R, k0 = t.shape
    if k0 == k and t.stride(2) == 1 and t.stride(1) >= k and (B == 1 or t.stride(0) == R * t.stride(1)):
        return t, t.stride(1)
    if k0 < k:
        t = torch.nn.functional.pad(t, (0, k - k0))
    return t.contiguous(), k


def _operands(
    dummy: torch.Tensor, x: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, int, torch.Tensor, int, int]:
    """``X``, its row stride, ``Y``, its row stride and their rank for a launch, the rank padded with zero
    columns to a multiple of :data:`RANK_PAD` (the kernels load chunks of that width unmasked; zeros add
    nothing to the products). Rank 0: never read, so a non-empty stand-in replaces the empty tensors."""
    k = x.shape[2]
    if k == 0:
        return dummy, 0, dummy, 0, 0
    k += -k % RANK_PAD.value
    return *_operand(x, k), *_operand(y, k), k


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Are ``a`` and ``b`` the same values in the same memory (one operand loaded once)?"""
    return a is b or (
        a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride() and a.dtype == b.dtype
    )


def complement_update(
    m: torch.Tensor,
    xu: torch.Tensor,
    yu: torch.Tensor,
    xm: torch.Tensor,
    ym: torch.Tensor,
    row: torch.Tensor,
    col: torch.Tensor,
    g_row: torch.Tensor,
    mask: torch.Tensor,
    bc1: torch.Tensor | float,
    bc2: torch.Tensor | float,
    eps: float,
    w: torch.Tensor | None = None,
    rho: torch.Tensor | None = None,
    lr: float = 0.0,
    wd: float = 0.0,
    stats: tuple[torch.Tensor, torch.Tensor] | None = None,
    hyper: StepScalars | None = None,
) -> torch.Tensor | None:
    """Triton twin of :func:`.reference.complement_update` (same signature; a new fp32 result, or
    ``None`` with the update applied to ``w``/``rho`` in place)."""
    args = (m, xu, yu, xm, ym, row, col, g_row, mask, bc1, bc2, eps)
    apply_args = dict(w=w, rho=rho, lr=lr, wd=wd, stats=stats, hyper=hyper)
    dev = m.device
    B, M, N = m.shape if m.dim() == 3 else (0, 0, 0)
    hp = hyper_row(hyper, dev, m)
    if hyper is not None:  # the floats are ignored: placeholders, never read
        bc1, bc2, lr, wd = 1.0, 1.0, 0.0, 0.0
    ok = (
        m.dim() == 3
        and m.dtype in (torch.float32, torch.bfloat16)
        and _factors_ok(B, M, N, dev, (xu, yu), (xm, ym))
        and all(t.dtype == torch.float32 and t.device == dev for t in (row, col, g_row))
        and row.shape == (B, M)
        and col.shape == (B, N)
        and g_row.dim() == 2
        and g_row.shape[0] == B
        and mask.shape == (B,)
        and mask.device == dev
        and isinstance(eps, float | int)
        and (isinstance(bc1, float | int) or _per_block(bc1, B, dev) is not None)
        and (isinstance(bc2, float | int) or _per_block(bc2, B, dev) is not None)
        and (w is None or (weights_ok(w, rho, m) and isinstance(lr, float | int) and isinstance(wd, float | int)))
        and hp is not None
    )
    if not ok:
        return reference.complement_update(*args, **apply_args)
    cs, floor, scale = reference.complement_vectors(row, col, g_row, mask, bc1, stats, hyper)
    bc2_blocks = hyper is None and isinstance(bc2, torch.Tensor)
    bc2_b = _per_block(bc2, B, dev) if bc2_blocks else None  # (not None: checked in ``ok``)
    vectors = ((row, (B, M)), (cs, (B, N)), (floor, (B,)), (scale, (B, 1, 1)))
    if not all(t.dtype == torch.float32 and tuple(t.shape) == sh for t, sh in vectors):  # e.g. a float64 mask
        return reference.complement_update(*args, **apply_args)
    R = correction_r(rho) if w is not None else 0
    blocks = isinstance(w, reference.WeightBlocks)
    if w is None:
        out = new_output((B, M, N), dev)
    else:
        out = w.views[0] if blocks else writable(w)  # (with blocks: only their type is read)
        rbuf = writable(rho) if rho is not None else None
    if m.numel():
        ia, ib, fi = new_output((B, M), dev), new_output((B, N), dev), new_output((B,), dev)
        nprep = triton.cdiv(B * M, PREP_BLOCK) + triton.cdiv(B * N, PREP_BLOCK) + 1
        _complement_prep_kernel[(nprep,)](
            row.contiguous(), cs.contiguous(), floor.contiguous(), bc2_b if bc2_blocks else fi, hp, ia, ib, fi,
            B, M, N, 1.0 if hyper is not None or bc2_blocks else _f32(bc2), _f32(eps),
            BLOCK=PREP_BLOCK, BC2_BLOCKS=bc2_blocks, HP_DEV=hyper is not None, **LAUNCH,
        )  # fmt: skip
        ntm, ntn = triton.cdiv(M, BM), triton.cdiv(N, BN)
        xu_k, sxu, yu_k, syu, ku = _operands(m, xu, yu)
        shared = ku > 0 and _same(yu, ym)  # (same shape: same rank)
        if shared:
            (xm_k, sxm), ym_k, sym, km = _operand(xm, ku), yu_k, syu, ku
        else:
            xm_k, sxm, ym_k, sym, km = _operands(m, xm, ym)
        bk = COMPLEMENT_BK_BF16 if all(t.dtype == torch.bfloat16 for t in (xu_k, yu_k, xm_k, ym_k)) else COMPLEMENT_BK
        _complement_update_kernel[(B * ntm * ntn,)](
            bf16_bits(out) if R else out, m.contiguous(), xu_k, yu_k, xm_k, ym_k,
            ia, ib, fi, scale.reshape(B).contiguous(), rbuf if R else fi, fi if hyper is None else hp,
            w.table if blocks else fi, M, N, ku, km, sxu, syu, sxm, sym, w.ld if blocks else N, ntm, ntn,
            1.0 - lr * wd, float(lr),
            BM=BM, BN=BN, BK=bk, PREC=precision(), APPLY=w is not None, R=R,
            HP_DEV=hyper is not None, EVEN=_even(M, N, BM, BN), SHARED_Y=shared, WTAB=blocks,
            **{**LAUNCH, "num_warps": COMPLEMENT_WARPS[w is not None]},
            **({"num_stages": COMPLEMENT_STAGES} if COMPLEMENT_STAGES else {}),
            **({"maxnreg": COMPLEMENT_MAXNREG} if COMPLEMENT_MAXNREG else {}),
        )  # fmt: skip
    if w is None:
        return out
    if not blocks:
        write_back(w, out)
    if rho is not None:
        write_back(rho, rbuf)
    return None
