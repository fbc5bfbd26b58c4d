"""Shared pieces of the Triton kernels: bit-level bf16 helpers, the group codecs, launch plumbing.

Every helper restates one expression of :mod:`scao_dist.quant` in the same order of fp32
operations, so the kernels match the torch twins bit for bit:

* no FMA contraction (kernels are launched with ``enable_fp_fusion=False``);
* divisions by tensors use ``tl.math.div_rn`` and square roots ``tl.sqrt_rn`` (IEEE, like torch;
  Triton's plain ``/`` and ``tl.sqrt`` are approximate on NVIDIA GPUs), or a sequence proven to give the
  same quotients for the operands it gets (:func:`div_by_groups`, :func:`div_companding`; both checked
  exhaustively against ``div_rn`` on the GPU by ``verify.division_errors``);
* bf16 values travel as their int16 bit patterns (the wrappers pass ``t.view(torch.int16)``); fp32 is
  rounded to bf16 to nearest even, by the hardware's conversion on the GPU and on the bits under the
  interpreter (:func:`f32_to_bf16`), never by a mode the backend picks;
* ``round`` (half to even, as ``torch.round``) is the magic-number trick ``(v + 1.5·2^23) - 1.5·2^23``,
  exact for ``|v| <= 2^22`` (every value rounded here is below 2^16).

Step scalars: a kernel launched with ``HP_DEV`` reads ``lr``, ``c = 1 - lr wd`` and ``1/bc`` (or ``bc``)
with ``tl.load(hp_ptr + HP_*)`` from a :class:`.scalars.StepScalars` row instead of taking them as fp32
arguments; the row holds the fp32 values those arguments would round to, so the results are the same.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from .. import quant
from . import scalars

GROUP: tl.constexpr = tl.constexpr(32)
"""Values per scale of the moment codecs (``quant.GROUP``)."""

INV127: tl.constexpr = tl.constexpr(1.0 / 127.0)
INV255: tl.constexpr = tl.constexpr(1.0 / 255.0)
FMAX: tl.constexpr = tl.constexpr(torch.finfo(torch.float32).max)
V_MIN: tl.constexpr = tl.constexpr(quant.V_MIN)
RINT_MAGIC: tl.constexpr = tl.constexpr(12582912.0)  # 1.5 * 2^23

HP_LR: tl.constexpr = tl.constexpr(scalars.LR)
HP_C: tl.constexpr = tl.constexpr(scalars.C)
HP_BC2: tl.constexpr = tl.constexpr(scalars.BC2)
HP_IB1: tl.constexpr = tl.constexpr(scalars.IB1)
HP_IB2: tl.constexpr = tl.constexpr(scalars.IB2)
HP_GATE: tl.constexpr = tl.constexpr(scalars.GATE)
"""Offsets of the :class:`.scalars.StepScalars` values the kernels load (``hp_ptr + HP_*``)."""

LAUNCH = dict(num_warps=4, enable_fp_fusion=False)
"""Options of every launch. No FMA contraction: the torch twins round every product."""


@triton.jit
def gate_shut(hp_ptr):
    """Is the step's gate shut (:class:`.scalars.StepScalars`' ``gate`` 0)? A kernel that writes state and
    reads a row returns at once then, writing nothing."""
    return tl.load(hp_ptr + HP_GATE) == 0.0


POISON_OUTPUTS = os.environ.get("SCAO_POISON_OUTPUTS", "0") == "1"
"""Debug/test switch: returned tensors start as NaN instead of uninitialised memory, so an
element a kernel forgets to write shows up as NaN."""


def new_output(
    shape: torch.Size | tuple[int, ...], device: torch.device, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """fp32 (or ``dtype``) tensor for a kernel to fill (NaN-poisoned when :data:`POISON_OUTPUTS` is set)."""
    if POISON_OUTPUTS:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def writable(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when a kernel can write it in place, else a contiguous copy (copy it back after)."""
    return t if t.is_contiguous() else t.contiguous()


def write_back(dst: torch.Tensor, buf: torch.Tensor) -> None:
    if buf is not dst:
        dst.copy_(buf)


def bf16_bits(t: torch.Tensor) -> torch.Tensor:
    """The int16 bit patterns of a bf16 tensor (a view: writes go through)."""
    return t.view(torch.int16)


# ------------------------------------------------------------------------------ tiling
@triton.jit
def tile_coords(pid, nti, ntj, BI: tl.constexpr, BJ: tl.constexpr):
    """Program ``pid`` of a launch over B stacked matrices cut into ``nti x ntj`` tiles of
    ``[BI, BJ]``, matrix by matrix, row of tiles by row: (matrix b, row indices, column indices)."""
    per = nti * ntj
    b = pid // per
    t = pid - b * per
    ti = t // ntj
    return b, ti * BI + tl.arange(0, BI), (t - ti * ntj) * BJ + tl.arange(0, BJ)


# ------------------------------------------------------------------------------ bit helpers
@triton.jit
def bf16_to_f32(b):
    """int16 bf16 bit pattern -> fp32 (exact)."""
    return (b.to(tl.int32) << 16).to(tl.float32, bitcast=True)


INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
"""Kernels run by Triton's interpreter (CPU tensors). It rounds fp32 to bf16 by truncation and multiplies bf16
tiles wrongly (Triton 3.9), so kernels that lean on the hardware's bf16 take a bit-level path under it."""

HW_BF16: tl.constexpr = tl.constexpr(not INTERPRETED)
"""Round fp32 to bf16 by the hardware's conversion (``cvt.rn.bf16x2.f32``: two values an instruction) in
:func:`f32_to_bf16`; the interpreter takes the bit-level path, the same bits."""

HW_RCP: tl.constexpr = tl.constexpr(not INTERPRETED)
"""Seed :func:`div_companding` with the hardware reciprocal (``rcp.approx.ftz.f32``, inline PTX the interpreter
cannot run); under the interpreter it is ``div_rn`` itself."""


HW_CVT: tl.constexpr = tl.constexpr(not INTERPRETED)
"""Round fp32 to an integer by the hardware's conversions (``cvt.rni.s32.f32``, ``cvt.rmi.s32.f32``: one
instruction for what the bit-level path does in three or more; inline PTX, which the interpreter cannot run) in
:func:`rint_i32` and :func:`floor_clamp`; the interpreter takes the fp32 path, the same integers."""

HW_RSQRT: tl.constexpr = tl.constexpr(not INTERPRETED)
"""Seed :func:`sqrt_fast` with the hardware reciprocal square root (``rsqrt.approx.ftz.f32``, inline PTX);
under the interpreter it is ``sqrt_rn`` itself."""


@triton.jit
def f32_to_bf16(x):
    """fp32 -> int16 bf16 bit pattern, round to nearest even.

    On the GPU the hardware conversion (:data:`HW_BF16`), as torch's own on CUDA; under the interpreter the
    same rounding on the bits, ``(u + 0x7FFF + lsb) >> 16``. The two differ only in a NaN's payload (0x7FFF
    on the GPU, 0x7FC0 from the bits, as torch on the CPU): no code reads it."""
    if HW_BF16:
        r = x.to(tl.bfloat16).to(tl.int16, bitcast=True)
    else:
        u = x.to(tl.uint32, bitcast=True)
        b = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
        r = tl.where(x != x, 0x7FC0, b).to(tl.int32).to(tl.int16)
    return r


@triton.jit
def bf16_ceil(s):
    """Non-negative fp32 ``s`` -> smallest bf16 ``>= s``: (int16 bits, fp32 value).

    Same as ``quant.bf16_scale_up`` (round to nearest, step up one bf16 ulp if that fell below).
    """
    r = (s.to(tl.uint32, bitcast=True) + 0xFFFF) >> 16
    return r.to(tl.int32).to(tl.int16), (r << 16).to(tl.float32, bitcast=True)


@triton.jit
def rint(v):
    """Round half to even (``torch.round``) for ``|v| <= 2^22``."""
    return (v + RINT_MAGIC) - RINT_MAGIC


@triton.jit
def rint_i32(v):
    """``torch.round(v)`` (half to even) as int32, for ``|v| <= 2^22``: one ``cvt.rni.s32.f32`` on the GPU
    (:data:`HW_CVT`), :func:`rint` and an exact conversion under the interpreter."""
    if HW_CVT:
        r = tl.inline_asm_elementwise("cvt.rni.s32.f32 $0, $1;", "=r,f", [v], dtype=tl.int32, is_pure=True, pack=1)
    else:
        r = rint(v).to(tl.int32)
    return r


@triton.jit
def floor_clamp(t, LIM: tl.constexpr):
    """``clamp(floor(t), -LIM, LIM)`` as int32 for any non-NaN fp32 ``t`` (``LIM < 2^22``).

    On the GPU (:data:`HW_CVT`) ``cvt.rmi.s32.f32``, which rounds toward -inf without flushing subnormals
    (``-2^-130 -> -1``; ``tl.floor`` is the ``.ftz`` form, which gives 0 there) and saturates at the int32 range,
    then the clamp in integers. Under the interpreter: ``t`` clamped to ``±(LIM + 1)`` first (same floor inside
    the range, and inside :func:`rint`'s exact range), ``floor = rint(t) - [rint(t) > t]``."""
    if HW_CVT:
        q = tl.inline_asm_elementwise("cvt.rmi.s32.f32 $0, $1;", "=r,f", [t], dtype=tl.int32, is_pure=True, pack=1)
    else:
        x = tl.minimum(tl.maximum(t, -(LIM + 1.0)), LIM + 1.0)
        r = rint(x)
        q = (r - tl.where(r > x, 1.0, 0.0)).to(tl.int32)
    return tl.minimum(tl.maximum(q, -LIM), LIM)


@triton.jit
def sqrt_fast(x):
    """``sqrt_rn(x)`` for ``x`` in [``V_MIN``, FMAX] (``V_MIN = 2^-100``, where :func:`encode_sqrt` clamps), bit for
    bit, without the IEEE square root's range check and branch, so the compiler can interleave a tile's roots.

    The IEEE square root's own fast path: ``r = rsqrt(x)`` (the hardware's approximation), ``s = x r``,
    ``e = x - s²`` (one FMA, exact) and ``s + e (r/2)``, correctly rounded for every ``x >= 2^-101`` (where the
    library's check sends it; smaller ``x`` would need their operand rescaled). ``verify.division_errors`` checks
    every fp32 in [``V_MIN``, FMAX] against ``sqrt_rn`` (:func:`sqrt_mismatches`)."""
    if HW_RSQRT:
        r = tl.inline_asm_elementwise(
            "rsqrt.approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=tl.float32, is_pure=True, pack=1
        )  # (x is normal: flushing subnormals changes nothing)
        s = x * r
        y = tl.fma(tl.fma(-s, s, x), r * 0.5, s)
    else:
        y = tl.sqrt_rn(x)
    return y


# ---------------------------------------------------------------------------- group codecs
@triton.jit
def div_by_groups(x, s):
    """``div_rn(x, s[:, None])`` wherever a code can tell, for a [groups, 32] tile ``x`` and positive per-group
    divisors ``s`` [groups] (the codecs' bf16 scales, ``|x| <= s``), with one division per group and three
    products per value instead of a division per value (the codec kernels are bound by their instructions).

    Both operands are first scaled by the power of two ``2^(127-E)`` (``E`` the exponent field of ``s``, kept
    in ``[1, 253]``), exactly, so ``s'`` lies in ``[2^-23, 4)`` and the quotient is unchanged. Then Markstein's
    correction: with ``r = RN(1/s')`` (the one division), ``q = RN(x' r)`` is within an ulp of ``x'/s'``, the
    remainder ``e = x' - s' q`` is exact in one FMA, and ``RN(q + e r)`` is the correctly rounded quotient.
    Only a quotient under ``2^-100`` (``x'`` subnormal) can come out otherwise; its code is 0 either way. An
    infinite scale gives a zero quotient (``s' = r = 0``) as ``div_rn`` does (up to its sign, which no code
    sees), a NaN one NaN. ``verify.division_errors`` checks it against ``div_rn`` bit for bit."""
    e = (s.to(tl.int32, bitcast=True) >> 23) & 0xFF
    scale = ((254 - tl.minimum(tl.maximum(e, 1), 253)) << 23).to(tl.float32, bitcast=True)  # 2^(127-E), normal
    sp = s * scale
    r = tl.math.div_rn(tl.full(s.shape, 1.0, tl.float32), sp)
    inf = s == float("inf")
    sp = tl.where(inf, 0.0, sp)[:, None]
    r = tl.where(inf, 0.0, r)[:, None]
    xp = x * scale[:, None]
    q = xp * r
    err = tl.fma(-q, sp, xp)
    return tl.fma(err, r, q)


@triton.jit
def div_companding(a, d):
    """``div_rn(a, d)`` for the signed companding's ``phi = 2y / (1 + |y|)`` (``|y| <= 1``: ``d`` in [1, 2]),
    without the division's range check and its branch (4 of its 10 instructions a value on sm_90).

    The same sequence as the IEEE division's fast path: ``r = rcp(d)`` (the hardware's approximate reciprocal),
    one Newton step ``r' = r + r (1 - d r)``, ``q = a r'`` and the remainder's correction ``q + r' (a - d q)``
    (FMAs). That path is correctly rounded wherever the hardware's check lets it through, which for ``d`` in
    [1, 2] is every ``|a|`` above the bottom of the fp32 range; below it the quotient (``< 2^-100``) codes as 0
    either way. ``verify.division_errors`` checks every fp32 ``y`` in [-1, 1] against ``div_rn``."""
    if HW_RCP:
        r = tl.inline_asm_elementwise(
            "rcp.approx.ftz.f32 $0, $1;", "=f,f", [d], dtype=tl.float32, is_pure=True, pack=1
        )  # (d in [1, 2]: flushing subnormals changes nothing)
        r = tl.fma(r, tl.fma(-d, r, 1.0), r)
        q = a * r
        q = tl.fma(r, tl.fma(-d, q, a), q)
    else:
        q = tl.math.div_rn(a, d)
    return q


@triton.jit
def decode_signed(q, s):
    """``quant.decode_signed``: phi = q/127, y = phi/(2-|phi|), x = y·s (the division by :func:`div_companding`:
    its divisor is in [1, 2] and ``|phi|`` is 0 or at least 1/127, where it is ``div_rn``'s)."""
    phi = q.to(tl.float32) * INV127
    y = div_companding(phi, 2.0 - tl.abs(phi))
    return y * s


@triton.jit
def encode_signed(x):
    """``quant.encode_signed`` of a [groups, 32] tile (invalid lanes hold 0).

    s = bf16 round-up of max|x|; y = clamp(x/s, -1, 1); q = round(127 · 2y/(1+|y|)).
    Returns (int8 codes, int16 scale bits [groups], fp32 scales [groups]).

    The twin's ``where(s > 0, ..., 0)`` and clamp are no-ops for finite ``x`` and left out: ``s >= |x|``, so the
    correctly rounded ``x/s`` is in [-1, 1], and a group with ``s = 0`` holds only zeros (``±0/1`` codes as 0).
    """
    sbits, s = bf16_ceil(tl.max(tl.abs(x), axis=1))
    y = div_by_groups(x, tl.where(s > 0, s, 1.0))
    phi = div_companding(2.0 * y, 1.0 + tl.abs(y))
    return rint_i32(phi * 127.0).to(tl.int8), sbits, s


@triton.jit
def decode_sqrt(q, s):
    """``quant.decode_sqrt`` (no zero-code floor: the EMA's input): u = (q/255)·s, v = min(u², FMAX). The floored
    value's root, which the denominator reads, is :func:`adam_root`'s."""
    u = q.to(tl.float32) * INV255 * s
    return tl.minimum(u * u, FMAX)


@triton.jit
def encode_sqrt(v, valid, MASKED: tl.constexpr):
    """``quant.encode_sqrt`` of a [groups, 32] tile: ``valid`` its stored values (with ``MASKED``; else all are).

    u = sqrt(clamp(v, V_MIN, FMAX)) (0 on the padding), s = bf16 round-up of max u, q = round(255 · min(u/s, 1)).
    Returns (uint8 codes, int16 scale bits [groups], fp32 scales [groups]).

    ``u/s`` is at most 1 (``s >= u``) and a stored group's ``s`` positive (``u >= 2^-50``): the twin's clamp and
    ``where(s > 0, ..., 0)`` are no-ops, left out as in :func:`encode_signed`.
    """
    u = sqrt_fast(tl.minimum(tl.maximum(v, V_MIN), FMAX))
    if MASKED:
        u = tl.where(valid, u, 0.0)
    sbits, s = bf16_ceil(tl.max(u, axis=1))
    r = div_by_groups(u, tl.where(s > 0, s, 1.0))  # (s = 0 only in a group past the end: nothing stored)
    return rint_i32(r * 255.0).to(tl.uint8), sbits, s


@triton.jit
def adam_root(q, s, r):
    """:func:`.reference.adam_root` of a [groups, 32] tile of codes without the floor: ``max(q, 1/2) k`` with the
    per-group ``k = (s/255) r`` (``s`` the fp32 scales [groups], ``r = sqrt_rn(1/bc2)`` a scalar or [groups])."""
    k = (s * INV255) * r
    return tl.maximum(q.to(tl.float32), 0.5) * k[:, None]


MAX_GROUPS = 1 << 30
"""Scale groups a group kernel takes in one launch (:func:`div_magic`'s range); more go to the twins."""


def magic_divisor(d: int) -> tuple[int, int]:
    """``(m, s)`` for :func:`div_magic`: ``floor(n/d) = umulhi(2n, m) >> s`` for every ``0 <= n < 2^30``.

    Granlund and Montgomery's round-up multiplier: with ``l = ceil(log2 d)``, ``s = max(l - 1, 0)`` and
    ``m = ceil(2^(31+s) / d)``, the error ``e = m d - 2^(31+s) <= d - 1 < 2^l`` keeps ``floor(m n / 2^(31+s))`` on
    ``floor(n/d)`` for every ``n < 2^(31+s-l) = 2^30`` (``2^31`` for ``d = 1``). ``m <= 2^31`` fits 32 unsigned bits;
    it is returned as the int32 with those bits (a launch argument of one type for every ``d``)."""
    if not 1 <= d < 1 << 31:
        raise ValueError(f"magic_divisor: divisor {d} is outside [1, 2^31)")
    s = max((d - 1).bit_length() - 1, 0)
    m = -(-(1 << (31 + s)) // d)
    return (m - (1 << 32) if m >= 1 << 31 else m), s


@triton.jit
def div_magic(n, m, s):
    """``floor(n / d)`` for int32 ``0 <= n < 2^30`` and ``(m, s) = magic_divisor(d)``: a high product and a shift
    (three instructions) instead of the integer division's ~20."""
    q = tl.umulhi((n << 1).to(tl.uint32, bitcast=True), m.to(tl.uint32, bitcast=True)) >> s.to(tl.uint32)
    return q.to(tl.int32, bitcast=True)


@triton.jit
def group_tile(nq, G, gm, gs, total, BG: tl.constexpr, NMUL: tl.constexpr, ALIGNED: tl.constexpr, I32: tl.constexpr):
    """Offsets of this program's [BG, 32] tile of scale groups.

    The operands are (R, n) rows (all leading dims flattened), the codes (R, G·32) and the
    scales (R, G), with ``n = nq·NMUL`` (see :func:`group_layout`). Group ``gid`` is group
    ``gid % G`` of row ``gid // G`` (:func:`div_magic` by ``(gm, gs) = magic_divisor(G)``); its codes sit at
    ``gid·32 + lane`` and its values at ``row·n + (gid % G)·32 + lane``. Returns (gid [BG], row [BG], group mask
    [BG], codes offsets, value offsets, value mask [BG, 32]).

    ``ALIGNED`` (rows of a multiple of 32 values, ``n = 32 G``): a group's values sit at its codes' offsets,
    ``row·n + (gid % G)·32 = gid·32``, so neither the row nor a per-value bound is worked out. Only for a kernel
    whose widths never change mid-run (:data:`ALIGNED_KERNELS`): a basis that grows by 16 would toggle it
    (:data:`SHAPE_ARGS`). ``I32`` (:func:`int32_offsets`): every offset fits in int32, and they are worked out in
    int32 instead of int64 (on rows off the grid, where each value's address is its own, 66 -> 60 sm_90
    instructions a value).
    """
    n = nq * NMUL  # NMUL tells the compiler how rows are aligned: 4 or more gives 16-byte vector loads
    g32 = tl.program_id(0) * BG + tl.arange(0, BG)
    gmask = g32 < total
    row32 = div_magic(g32, gm, gs)
    if I32:
        gid = g32
        row = row32
    else:
        gid = g32.to(tl.int64)
        row = row32.to(tl.int64)
    lane = tl.arange(0, GROUP)
    coff = gid[:, None] * GROUP + lane[None, :]
    if ALIGNED:
        xoff = coff
        valid = gmask[:, None] & (lane[None, :] < GROUP)
    else:
        col = (g32 - row32 * G) * GROUP
        xoff = (row * n + col)[:, None] + lane[None, :]
        valid = gmask[:, None] & ((col[:, None] + lane[None, :]) < n)
    return gid, row, gmask, coff, xoff, valid


@triton.jit
def row_tile(nq, G, cm, cs, BG: tl.constexpr, NMUL: tl.constexpr):
    """:func:`group_tile`'s offsets when each program owns ``BG`` consecutive groups of one row (masked past ``G``):
    program ``p`` takes chunk ``p % C`` of row ``p // C``, ``C = cdiv(G, BG)`` chunks a row, ``(cm, cs) =
    magic_divisor(C)`` (launch ``R·C`` programs). The row is worked out once for the program instead of once for
    each group, and the tile's values sit at one base plus ``32 k + lane``: one contiguous run of ``x`` however its
    rows are aligned. Same returns and layout of the operands, except that the row is the program's (a scalar). The
    offsets are int64 (unlike :func:`group_tile`'s ``I32``): the run's 64-bit base is then worked out once and each
    value's address is an immediate past it (int32 offsets were widened value by value: 437 against 412 sm_90
    instructions a thread on rows of 767 with bf16 ``x``, measured on ``session_pa``'s two-axis launch).
    """
    n = nq * NMUL
    pid = tl.program_id(0)
    row32 = div_magic(pid, cm, cs)
    k = (pid - row32 * ((G + BG - 1) // BG)) * BG + tl.arange(0, BG)  # groups of the row
    gmask = k < G
    row = row32.to(tl.int64)
    gid = row * G + k
    lane = tl.arange(0, GROUP)
    coff = gid[:, None] * GROUP + lane[None, :]
    col = k[:, None] * GROUP + lane[None, :]
    xoff = row * n + col
    valid = col < n
    return gid, row, gmask, coff, xoff, valid


ShapeArgs = tuple[int, int, int, int, int]
"""``(nq, G, gm, gs, total)``: the size arguments of a group kernel (:func:`group_layout`)."""


def row_launch(shape_args: ShapeArgs, bg: int) -> tuple[tuple[int], ShapeArgs]:
    """The grid and the size arguments of a :func:`row_tile` launch: ``(gm, gs)`` of :func:`group_layout` replaced
    by the magic divisor of the chunks a row (``cdiv(G, bg)``)."""
    nq, G, _gm, _gs, total = shape_args
    chunks = triton.cdiv(G, bg)
    return ((total // G) * chunks,), (nq, G, *magic_divisor(chunks), total)


@triton.jit
def load_lanewise(ptr, off, mask, BG: tl.constexpr):
    """``tl.load(ptr + off, mask=mask, other=0)`` of a [BG, 32] tile through a flat [BG·32] view, for rows off the
    16-byte grid (no vector loads): the compiler lays the flat load out one value a thread, lane after lane (each
    warp-wide load reads 32 consecutive values), and moves the values into the tile's layout through shared memory.
    Loaded in the tile's own layout, each thread would read its 16 consecutive values one by one, and each
    warp-wide load would touch 16 cache lines instead of one or two."""
    flat = tl.load(ptr + tl.reshape(off, (BG * GROUP,)), mask=tl.reshape(mask, (BG * GROUP,)), other=0)
    return tl.reshape(flat, (BG, GROUP))


SHAPE_ARGS = ["nq", "G", "gm", "gs", "total"]
"""Size arguments of the group kernels, kept out of Triton's specialisation (``do_not_specialize``):
a basis that grows by 16 columns at a refresh changes ``n % 32``, ``G == 1``, ``G``'s multiplier and shift and
``total % 16``, and each of those would otherwise compile a new variant mid-run (measured: 320-355 ms stalls
in the 405M run, BENCHMARKS.md §0c). Only ``NMUL`` (a constexpr) varies: it is 16 for every
width the groups allocate (multiples of 16) except a basis capped at ``d - p``."""


ALIGNED_KERNELS = ("ema_signed_", "adamw_")
"""The group kernels that take :func:`group_tile`'s ``ALIGNED`` path for rows of a multiple of 32 values: they
read weight-shaped operands (the first moment, the 1-D AdamW rows), whose widths are fixed for a run."""


def group_layout(x: torch.Tensor) -> tuple[tuple[int, int, int, int, int], int] | None:
    """``((nq, G, gm, gs, total), NMUL)`` of an (..., n) operand for :func:`group_tile` (the first five are its
    launch arguments): ``n = nq·NMUL`` with ``NMUL = gcd(n, 16)`` (the alignment the compiler may assume),
    ``G = ceil(n/32)`` groups per row, ``(gm, gs) = magic_divisor(G)``, ``total`` groups in all. ``None`` for
    :data:`MAX_GROUPS` groups or more (the caller then uses the reference)."""
    n = x.shape[-1]
    G = max((n + 31) // 32, 1)
    total = (x.numel() // n if n else 0) * G
    if total >= MAX_GROUPS:
        return None
    nmul = math.gcd(n, 16) or 1
    return (n // nmul, G, *magic_divisor(G), total), nmul


# -------------------------------------------------------------------------- host-side helpers
INT32_OFFSETS = True
"""Let :func:`group_tile` work its offsets out in int32 where they fit (:func:`int32_offsets`); false: int64 always
(the interpreter suite's tiny-block pass runs that side)."""


def int32_offsets(x: torch.Tensor, total: int) -> bool:
    """Whether :func:`group_tile`'s offsets for an (..., n) operand ``x`` of ``total`` scale groups fit in int32: the
    values' (up to a group's padding past the last row) and the codes' (``32 total``)."""
    return INT32_OFFSETS and max(x.numel() + GROUP, total * GROUP) < 2**31


def packed_ok(
    codes: torch.Tensor,
    scales: torch.Tensor,
    x: torch.Tensor,
    code_dtype: torch.dtype,
    x_dtypes: tuple[torch.dtype, ...] = (torch.float32,),
) -> bool:
    """Whether (codes, scales) is the packed layout of an ``x`` (one of ``x_dtypes``) that the group kernels handle."""
    if x.dim() == 0 or x.dtype not in x_dtypes or codes.dtype != code_dtype or scales.dtype != torch.bfloat16:
        return False
    n = x.shape[-1]
    G = (n + 31) // 32
    lead = tuple(x.shape[:-1])
    same_dev = codes.device == x.device and scales.device == x.device
    return same_dev and tuple(codes.shape) == (*lead, G * 32) and tuple(scales.shape) == (*lead, G)


def hyper_row(hyper: scalars.StepScalars | None, device: torch.device, dummy: torch.Tensor) -> torch.Tensor | None:
    """What a kernel takes as ``hp_ptr``: ``hyper``'s row, or ``dummy`` (any fp32 tensor, never read)
    without one; ``None`` for a row on another device than the operands (the caller then uses the
    reference)."""
    if hyper is None:
        return dummy
    return hyper.row if hyper.device == device else None


def floor_rows(floor: torch.Tensor, lead: tuple[int, ...], device: torch.device) -> tuple[torch.Tensor, int] | None:
    """A floor as the kernels take it: fp32 values and how many consecutive rows of ``lead`` share each
    (``floor`` broadcasting to ``(*lead, 1)``): one per leading index, as ``(b, 1, 1)`` for ``(b, k, k)``,
    is passed as it is (no copy), anything else one per row. ``None`` when it does not broadcast (the
    caller then uses the reference)."""
    if floor.dtype != torch.float32 or floor.device != device:
        return None
    try:
        torch.broadcast_shapes(floor.shape, (*lead, 1))
    except RuntimeError:
        return None
    if lead and floor.dim() == len(lead) + 1 and floor.shape[0] == lead[0] and floor[0].numel() == 1:
        return floor.reshape(-1).contiguous(), math.prod(lead[1:])
    return torch.broadcast_to(floor, (*lead, 1)).reshape(-1).contiguous(), 1


def bias_rows(bc: torch.Tensor | float, lead: tuple[int, ...], device: torch.device) -> torch.Tensor | float | None:
    """``1/bc`` as the kernels take it: a Python float, or one fp32 value per row of ``lead``.

    Computed exactly as the twin does (``1.0 / bc``). ``None`` when ``bc`` does not broadcast to
    ``(*lead, 1)`` as an fp32 tensor (the caller then uses the reference).
    """
    if not isinstance(bc, torch.Tensor):
        return 1.0 / float(bc)
    if bc.dtype != torch.float32 or bc.device != device:
        return None
    try:
        inv = torch.broadcast_to(1.0 / bc, (*lead, 1))
    except RuntimeError:
        return None
    return inv.reshape(-1).contiguous()


# ---------------------------------------------------------------------------- the division's check
DIVISION_REGIMES = ((0, 0), (-118, -96), (-117, -96), (94, 95), (-126, -126), (126, 127), (105, 127))
"""``(x exponent, s exponent)`` of :func:`division_mismatches`' operands: quotients near 1; the smallest
quotients a code can see at small and at the smallest normal divisors; and the largest divisors, where the
scaling multiplies by ``2^-126``."""


@triton.jit
def _division_check_kernel(count_ptr, x0, XE: tl.constexpr, SE: tl.constexpr, BG: tl.constexpr):
    """Program (i, k): the [BG, 32] fp32 values ``x = 2^XE (1 + (x0 + i BG 32 + lane) 2^-23)`` divided by the bf16
    ``s = 2^SE (1 + k/128)``, by :func:`div_by_groups` and by ``div_rn``; adds the bit mismatches where the
    quotient is at least ``2^-22`` (where the two must agree) to ``count_ptr[k]``."""
    k = tl.program_id(1)
    m = x0 + tl.program_id(0) * (BG * 32) + tl.arange(0, BG)[:, None] * 32 + tl.arange(0, 32)[None, :]
    x = (((127 + XE) << 23) + m).to(tl.float32, bitcast=True)  # (built from bits: exact, fp32)
    s = (tl.zeros([BG], tl.int32) + (((127 + SE) << 23) + (k << 16))).to(tl.float32, bitcast=True)
    fast = div_by_groups(x, s)
    ref = tl.math.div_rn(x, s[:, None])
    bad = (fast.to(tl.int32, bitcast=True) != ref.to(tl.int32, bitcast=True)) & (ref >= 2.0**-22)
    tl.atomic_add(count_ptr + k, tl.sum(bad.to(tl.int32), axis=1).sum(axis=0))


@triton.jit
def _companding_check_kernel(count_ptr, y0, BLOCK: tl.constexpr):
    """Program i: the fp32 ``y`` with bit patterns ``y0 + i BLOCK + [0, BLOCK)`` (both signs) through the
    companding's division (:func:`div_companding`) and through ``div_rn``; adds the quotients whose bits differ
    to ``count_ptr[0]`` and the codes (``rint(127 phi)``) that differ to ``count_ptr[1]``."""
    bits = y0 + tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    for sign in tl.static_range(2):
        y = bits.to(tl.float32, bitcast=True)
        if sign == 1:
            y = -y
        a = 2.0 * y
        d = 1.0 + tl.abs(y)
        fast = div_companding(a, d)
        ref = tl.math.div_rn(a, d)
        differ = fast.to(tl.int32, bitcast=True) != ref.to(tl.int32, bitcast=True)
        tl.atomic_add(count_ptr, tl.sum(differ.to(tl.int32), axis=0))
        codes = rint(fast * 127.0) != rint(ref * 127.0)
        tl.atomic_add(count_ptr + 1, tl.sum(codes.to(tl.int32), axis=0))


@triton.jit
def _decode_check_kernel(count_ptr):
    """Every int8 code through :func:`decode_signed` (its division by :func:`div_companding`) and through
    ``div_rn``; adds the values whose bits differ to ``count_ptr[0]``."""
    q = tl.arange(0, 256) - 128
    phi = q.to(tl.float32) * INV127
    ref = tl.math.div_rn(phi, 2.0 - tl.abs(phi))
    differ = decode_signed(q, 1.0).to(tl.int32, bitcast=True) != ref.to(tl.int32, bitcast=True)
    tl.atomic_add(count_ptr, tl.sum(differ.to(tl.int32), axis=0))


def decode_mismatches(device: torch.device) -> int:
    """How many of the 256 codes :func:`decode_signed` decodes to other bits than ``div_rn`` does (must be 0)."""
    count = torch.zeros(1, dtype=torch.int32, device=device)
    _decode_check_kernel[(1,)](count, **LAUNCH)
    return int(count.item())


@triton.jit
def _sqrt_check_kernel(count_ptr, x0, hi, BLOCK: tl.constexpr):
    """Program i: the fp32 with bit patterns ``x0 + i BLOCK + [0, BLOCK)`` below ``hi`` through :func:`sqrt_fast`
    and through ``sqrt_rn``; adds the results whose bits differ to ``count_ptr[0]``."""
    bits = x0 + tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = bits.to(tl.float32, bitcast=True)
    fast = sqrt_fast(x).to(tl.int32, bitcast=True)
    differ = (fast != tl.sqrt_rn(x).to(tl.int32, bitcast=True)) & (bits < hi)
    tl.atomic_add(count_ptr, tl.sum(differ.to(tl.int32), axis=0))


SQRT_X_BITS = ((127 - 100) << 23, 0x7F800000)
"""Bit patterns of the ``x`` :func:`sqrt_mismatches` runs through by default: every fp32 in [``V_MIN``, FMAX]
(:func:`sqrt_fast`'s operands)."""


def sqrt_mismatches(device: torch.device, lo: int = SQRT_X_BITS[0], hi: int = SQRT_X_BITS[1]) -> int:
    """How many fp32 with bit patterns in ``[lo, hi)`` (by default all of [``V_MIN``, FMAX]) :func:`sqrt_fast` takes to
    other bits than ``sqrt_rn`` (must be 0)."""
    block = 1024
    count = torch.zeros(1, dtype=torch.int32, device=device)
    if hi > lo:
        _sqrt_check_kernel[(-(-(hi - lo) // block),)](count, lo, hi, BLOCK=block, **LAUNCH)
    return int(count.item())


COMPANDING_Y_BITS = (0, 0x3F800001)
"""Bit patterns of the ``|y|`` :func:`companding_mismatches` runs through by default: every fp32 in [0, 1]."""


def companding_mismatches(
    device: torch.device, lo: int = COMPANDING_Y_BITS[0], hi: int = COMPANDING_Y_BITS[1]
) -> dict[str, int]:
    """Over every fp32 ``y`` with ``|y|``'s bits in ``[lo, hi)`` (both signs; by default all of [-1, 1]): how many
    quotients of :func:`div_companding` differ from ``div_rn`` in any bit (``"quotients"``: at most the tiny ones,
    whose codes are 0 either way) and how many codes ``rint(127 phi)`` differ (``"codes"``: must be 0)."""
    block = 1024
    count = torch.zeros(2, dtype=torch.int32, device=device)
    n = -(-(hi - lo) // block) * block  # (rounded up: past hi are y just above 1, still d in [1, 2])
    if n > 0:
        _companding_check_kernel[(n // block,)](count, lo, BLOCK=block, **LAUNCH)
    quotients, codes = (int(c) for c in count.tolist())
    return {"quotients": quotients, "codes": codes}


def division_mismatches(device: torch.device, x_values: int = 1 << 23, mantissas: int = 128) -> dict[str, int]:
    """Per :data:`DIVISION_REGIMES`: the number of ``(x, s)`` where :func:`div_by_groups` and ``div_rn`` differ
    (quotients ``>= 2^-22``), over the first ``x_values`` fp32 mantissas of ``x`` (all ``2^23`` by default) and
    the first ``mantissas`` bf16 mantissas of ``s`` (all 128). The division depends on the mantissas alone
    where nothing under- or overflows, so the default is every case of the normal range."""
    bg = 32
    if x_values % (bg * 32):
        raise ValueError(f"x_values must be a multiple of {bg * 32}, got {x_values}")
    out = {}
    for xe, se in DIVISION_REGIMES:
        count = torch.zeros(mantissas, dtype=torch.int32, device=device)
        _division_check_kernel[(x_values // (bg * 32), mantissas)](count, 0, XE=xe, SE=se, BG=bg, **LAUNCH)
        out[f"x 2^{xe}, s 2^{se}"] = int(count.sum())
    return out
