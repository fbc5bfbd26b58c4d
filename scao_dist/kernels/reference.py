"""Plain-torch reference versions of the fused elementwise steps (the oracle for the kernels).

Each function updates its quantized state *in place* and returns what the next stage needs.
The Triton kernels in this package compute the same expressions in the same order; the tests
compare them on fresh random inputs. Scalar divisions are spelled as products with the reciprocal
(``m * (1/bc1)``) and square roots go through :func:`quant.sqrt_rn`, so CPU torch, CUDA torch and
the kernels agree bit for bit (see :mod:`scao_dist.quant`). Shapes: leading dims are the
stacked blocks of a group, the codecs group the flattened trailing values in groups of
``quant.GROUP``.

:func:`complement_add_` divides by ``bc2`` truly (IEEE, as a 0-d tensor) and takes its square roots
on per-row and per-column vectors (:func:`complement_reciprocals`).

The math, per element (``t`` = Adam step, ``bc1 = 1 - b1^t``, ``bc2 = 1 - b2^t``):

* :func:`ema_signed_`:   ``m <- b m + (1-b) x`` on a companded int8 moment; returns ``m``.
* :func:`rotated_adam_`: ``v <- b2 v + (1-b2) g^2`` on a sqrt-companded uint8 moment; returns
  the Adam direction ``u = (m/bc1) / (sqrt(v/bc2) + eps)``.
* :func:`apply_update_`: ``x <- x (1 - lr wd) - lr u`` on bf16 weights + correction bits
  (``x = w + rho ulp(w)/2R``, see ``quant.split_master``), or in place on fp32 weights.
* :func:`factor_ema_corr_`: ``L <- b L + (1-b) A`` on an int8 correlation + exact fp32 diagonal
  factor (``quant.encode_corr``, what SCAO keeps), dithered rounding.
* :func:`adamw_`:        the whole AdamW step of the 1-D path (both moments + apply) in one go.
* :func:`complement_add_`: ``u += mask (M - B)/bc1 / max(sqrt(r_i c_j / mean(r) / bc2), sqrt(floor / bc2) + eps)``,
  Adam on the complement of a truncated basis with a factored second moment (``groups``).
* :func:`residual_sumsq`: row and column sums of squares of ``G`` and of ``G - X Y^T``.
* :func:`complement_update`: ``U = X_u Y_u^T``, then :func:`complement_add_` with ``B = X_m Y_m^T``.
* :func:`finite_gather`: the step's NaN/inf check (are all values finite?) with the gradients' copies
  into the group buffers on the way.

The last two take low-rank products ``X Y^T`` (``X`` (B, m, k), ``Y`` (B, n, k)) where the rest
take full-size tensors: their kernels form each [BM, BN] tile of the product on the fly (a
``tl.dot`` over ``k``) and never write it, so only ``G`` or ``M`` and the result cross memory. The
products are fp32 matmuls in both (TF32 where torch's matmuls are), in different orders, so these
two agree with their kernels within a tolerance set by the size of the products, not bit for bit.

``hyper``: :func:`rotated_adam_`, :func:`apply_update_`, :func:`adamw_`, :func:`complement_add_` and
:func:`complement_update` take the step's ``lr``, ``c = 1 - lr wd``, ``bc1``, ``bc2``, ``1/bc1`` and
``1/bc2`` from a :class:`.scalars.StepScalars` (fp32 0-d tensors, for a captured step) instead of their
float arguments, which they then ignore. The row holds exactly the fp32 values the float path
rounds its scalars to, so both give the same bits; the one float the float path divides by as a
Python scalar, ``bc1`` in the complement's ``mask / bc1``, is matched by :func:`hyper_scale`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import Tensor

from .. import quant
from .scalars import StepScalars, gated_


def ema_signed_(
    codes: Tensor,
    scales: Tensor,
    x: Tensor,
    beta: float,
    out_dtype: torch.dtype = torch.float32,
    hyper: StepScalars | None = None,
) -> Tensor:
    """In-place EMA of an int8 companded moment with fp32 or bf16 ``x`` (B, N); returns the new value
    (before its encoding) in ``out_dtype``: fp32, or bf16 (rounded to nearest even) for a step whose
    products read it as bf16 (``groups.KronGroup``). ``hyper``: only its gate is read (shut: the codes
    are kept)."""
    n = x.shape[-1]
    m = quant.decode_signed(codes, scales, n) * beta + x.float() * (1.0 - beta)
    c, s = quant.encode_signed(m)
    gated_(codes, c, hyper)
    gated_(scales, s, hyper)
    return m.to(out_dtype)


def rotated_adam_(
    codes: Tensor,
    scales: Tensor,
    g: Tensor,
    m: Tensor,
    beta2: float,
    bc1: Tensor | float,
    bc2: Tensor | float,
    eps: float,
    hyper: StepScalars | None = None,
    floor: Tensor | None = None,
) -> Tensor:
    """In-place EMA of the uint8 sqrt-companded ``v`` with ``g^2``; returns the Adam direction.

    ``g`` and ``m`` are (B, N) fp32; ``bc1``/``bc2`` are floats or (B, 1) tensors, or ignored for
    ``hyper`` (``u = (m ib1) / (sqrt(v ib2) + eps)`` with its ``ib1 = 1/bc1``, ``ib2 = 1/bc2``; the root taken
    from the codes, :func:`adam_root`).
    ``floor``: fp32, broadcasting to (B, 1): the denominator reads ``max(v, floor)`` (the stored ``v``
    is not changed), so a direction the gradient leaves empty divides its first moment's rounding
    noise by the floor instead of ``eps`` (``groups.KronGroup._rot_floor``).
    """
    n = g.shape[-1]
    v = quant.decode_sqrt(codes, scales, n) * beta2 + (g * g) * (1.0 - beta2)
    c, s = quant.encode_sqrt(v)
    gated_(codes, c, hyper)
    gated_(scales, s, hyper)
    ib1, ib2 = (hyper.ib1, hyper.ib2) if hyper is not None else (1.0 / bc1, 1.0 / bc2)
    root = adam_root(c, s, ib2, n, floor, g.device)  # the denominator sees the stored value
    return (m * ib1) / (root + eps)


def adam_root(
    codes: Tensor, scales: Tensor, ib2: Tensor | float, n: int, floor: Tensor | None, device: torch.device
) -> Tensor:
    """Adam's ``sqrt(max(v, floor) / bc2)`` from the stored sqrt-companded ``v``, without a square root a value.

    ``sqrt(v)`` is what the codes hold (``max(q, 1/2) s/255``), so with ``r = sqrt_rn(ib2)`` (fp32, ``ib2 = 1/bc2``
    a float, a (B, 1) tensor or the step scalars' 0-d one) the root is ``max(q, 1/2) k`` for the per-group
    ``k = (s/255) r`` (:func:`quant.decode_root`), and the floor's ``sqrt_rn(floor) r`` (sqrt is monotone)."""
    r = quant.sqrt_rn(torch.as_tensor(ib2, dtype=torch.float32, device=device))
    root = quant.decode_root(codes, scales.float() * (1.0 / 255.0) * r, n)
    if floor is not None:
        root = torch.maximum(root, quant.sqrt_rn(floor) * r)
    return root


def apply_update_(
    w: Tensor, rho: Tensor | None, u: Tensor, lr: float, wd: float, hyper: StepScalars | None = None
) -> None:
    """In-place decoupled-weight-decay step ``x <- x c - u lr``, ``c = 1 - lr wd``, on ``w`` (fp32, or
    bf16 with correction ``rho``); ``c`` and ``lr`` from ``hyper`` when given (``lr``, ``wd`` ignored; its
    gate shut: nothing changes)."""
    c, lr = (hyper.c, hyper.lr) if hyper is not None else (1.0 - lr * wd, lr)
    if rho is None:
        if hyper is None:
            w.mul_(c).sub_(u * lr)
        else:
            gated_(w, w * c - u * lr, hyper)
        return
    x = quant.join_master(w, rho) * c - u * lr
    bits = 8 if rho.dtype == torch.int8 else 16
    nw, nr = quant.split_master(x, bits)
    gated_(w, nw, hyper)
    gated_(rho, nr, hyper)


def factor_ema_corr_(
    codes: Tensor, diag: Tensor, outer: Tensor, beta: float, seed: Tensor | int, hyper: StepScalars | None = None
) -> None:
    """In-place ``L <- beta L + (1 - beta) outer`` on an int8 correlation-coded factor (B, d, d) (kept when
    ``hyper``'s gate is shut)."""
    f = quant.decode_corr(codes, diag) * beta + outer * (1.0 - beta)
    c, dg = quant.encode_corr(f, seed)
    gated_(codes, c, hyper)
    gated_(diag, dg, hyper)


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
    hyper: StepScalars | None = None,
) -> None:
    """AdamW on (B, N) blocks with int8 moments and bf16+correction (or fp32) weights; ``lr``,
    ``wd``, ``bc1``, ``bc2`` from ``hyper`` when given (:func:`rotated_adam_`, :func:`apply_update_`).
    ``g``: fp32, or bf16 (widened to fp32 first, exactly)."""
    g = g.float()
    m = ema_signed_(m_codes, m_scales, g, beta1, hyper=hyper)
    u = rotated_adam_(v_codes, v_scales, g, m, beta2, bc1, bc2, eps, hyper=hyper)
    apply_update_(w, rho, u, lr, wd, hyper=hyper)


RES_FLOOR = 3e-2
"""The complement's second moment is floored at ``(RES_FLOOR * RMS gradient)^2`` per block: residual energy
under 0.1% of the block's mean square counts as empty. The first moment's int8 code noise (a step of up to
2^-7 of a scale group's largest value) and the bf16 rounding of a projection leave ``M - X_m Y_m^T`` a few
10^-3 of the gradient's RMS where the gradient leaves the complement empty, and Adam divides that by the
floor: at 1e-3 into full-size steps outside the gradients' span (``bench.lowrank_toy``: 11.5 against 0.014
with fp32 states; 1.5 at 3e-2). Tiny GPT with streamed sides (``bench.tiny_ablation``, CPU): held-out
1.5259 / 1.4818 (ranks 32 / 128) against 1.5265 / 1.5069 at 1e-3 (both floors); 1.5302 / 1.5125 at 1e-1."""

ROT_FLOOR = 3e-2
"""The rotated second moment of a block with a stream side is floored at ``(ROT_FLOOR * RMS gradient)^2``
(``groups.KronGroup._rot_floor``): the same noise reaches the core directions the gradient leaves empty
through ``Q_L^T M Q_R`` (with int8 moments alone the toy moved 54 outside the span, 36 with only the
complement floored, 1.4 with both)."""


def complement_vectors(
    row: Tensor,
    col: Tensor,
    g_row: Tensor,
    mask: Tensor,
    bc1: Tensor | float,
    stats: tuple[Tensor, Tensor] | None = None,
    hyper: StepScalars | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The per-block pieces of :func:`complement_add_`, shared by the twin and the kernel's wrapper:
    ``col / max(mean(row), 1e-30)`` (B, n), the floor ``RES_FLOOR^2 mean(g_row)`` (B,) and the scale
    ``mask / bc1`` (B, 1, 1) (fp32 for a bool mask and a float or fp32 ``bc1``; with ``hyper``,
    :func:`hyper_scale`). ``stats``: the first two as :func:`residual_stats` returned them (then only
    the scale is formed here)."""
    cs, floor = complement_stats(row, col, g_row) if stats is None else stats
    return cs, floor, mask[:, None, None] / bc1 if hyper is None else hyper_scale(mask, hyper)


_RECIPROCAL_SCALAR_DIV: dict[str, bool] = {}


def scalar_div_by_reciprocal(device: torch.device) -> bool:
    """Does torch compute ``x / b``, for an fp32 tensor ``x`` on ``device`` and a Python float ``b``, as
    ``x * fp32(1/b)`` (the reciprocal taken in float64 and rounded once, the row's ``ib1``: CUDA, seen
    with torch 2.11) rather than as the IEEE fp32 division ``x / fp32(b)`` (CPU)? The two differ by an
    ulp for about one ``b = 1 - 0.9^t`` in eight. Found out once per device type, from ``b = 1 - 0.9^7``
    (where they differ); on CUDA the first call must not be inside a graph capture (it reads the
    result back), which the eager step before a capture sees to."""
    kind = torch.device(device).type
    if kind not in _RECIPROCAL_SCALAR_DIV:
        b = 1 - 0.9**7
        got = (torch.ones((), device=device) / b).cpu()
        _RECIPROCAL_SCALAR_DIV[kind] = bool(got == torch.tensor(1.0 / b, dtype=torch.float32))
    return _RECIPROCAL_SCALAR_DIV[kind]


def hyper_scale(mask: Tensor, hyper: StepScalars) -> Tensor:
    """``mask / bc1`` (B, 1, 1) with ``bc1`` from the row, bit for bit what the float path's
    ``mask / float(bc1)`` gives on ``mask``'s device (``mask`` is 0 or 1, so only how torch divides by
    a float matters, :func:`scalar_div_by_reciprocal`): ``mask * ib1`` where it multiplies by the
    float64 reciprocal, else the IEEE division ``mask / bc1`` by the row's fp32 ``bc1``."""
    dev = mask.device
    if scalar_div_by_reciprocal(dev):
        return mask[:, None, None] * hyper.ib1.to(dev)
    return mask[:, None, None] / hyper.bc1.to(dev)


def complement_stats(row: Tensor, col: Tensor, g_row: Tensor) -> tuple[Tensor, Tensor]:
    """``col / max(mean(row), 1e-30)`` (B, n) and ``RES_FLOOR^2 mean(g_row)`` (B,)."""
    cs = col / row.mean(-1, keepdim=True).clamp_min(1e-30)
    floor = (RES_FLOOR**2) * g_row.mean(-1)
    return cs, floor


def residual_stats(
    g: Tensor,
    x: Tensor | None,
    y: Tensor | None,
    g_row: Tensor,
    g_col: Tensor,
    res_row: Tensor,
    res_col: Tensor,
    mask: Tensor | None,
    beta2: float,
    every: bool,
    hyper: StepScalars | None = None,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Everything a step derives from the row/column sums of squares of ``G`` (B, m, n), in place:

        g_row <- b2 g_row + (1-b2)/n rowsum(G^2)      g_col <- b2 g_col + (1-b2)/m colsum(G^2)
        res_row <- b2 res_row + (1-b2)/n rowsum(R^2)  res_col likewise,   R = G - X Y^T

    (the residual EMAs only given ``X``, ``Y``, and only for the blocks ``mask`` selects unless
    ``every``). Returns ``(||G||^2 (B,), cs, floor)``, ``cs, floor`` being
    :func:`complement_stats` of the new residual and gradient statistics (``None`` without
    ``X``, ``Y``). The operations and their order are those ``groups.KronGroup`` ran before the
    kernel existed. ``hyper``: only its gate is read (shut: the statistics are kept)."""
    if hyper is not None:  # the same operations on copies, kept where the gate is open
        states = (g_row, g_col, res_row, res_col)
        work = [t.clone() for t in states]
        out = residual_stats(g, x, y, *work, mask, beta2, every)
        for t, new in zip(states, work):
            gated_(t, new, hyper)
        return out
    m_dim, n_dim = g.shape[-2:]
    row_ss, col_ss, res_rows, res_cols = residual_sumsq(g, x, y)
    g_row.mul_(beta2).add_(row_ss, alpha=(1 - beta2) / n_dim)
    g_col.mul_(beta2).add_(col_ss, alpha=(1 - beta2) / m_dim)
    sumsq = row_ss.sum(-1)
    if res_rows is None or res_cols is None:
        return sumsq, None, None
    for st, ss, dim in ((res_row, res_rows, n_dim), (res_col, res_cols, m_dim)):
        if every:
            st.mul_(beta2).add_(ss * ((1 - beta2) / dim))
        else:
            if mask is None:
                raise ValueError("residual_stats: pass the (B,) mask of truncated blocks, or every=True")
            st.copy_(torch.where(mask[:, None], st * beta2 + ss * ((1 - beta2) / dim), st))
    cs, floor = complement_stats(res_row, res_col, g_row)
    return sumsq, cs, floor


def complement_add_(
    u: Tensor,
    back_m: Tensor,
    m: Tensor,
    row: Tensor,
    col: Tensor,
    g_row: Tensor,
    mask: Tensor,
    bc1: Tensor | float,
    bc2: Tensor | float,
    eps: float,
    stats: tuple[Tensor, Tensor] | None = None,
    hyper: StepScalars | None = None,
) -> Tensor:
    """``u += mask (m - back_m)/bc1 / max(sqrt(row_i (col_j / mr) / bc2), sqrt(floor / bc2) + eps)``, in place;
    returns ``u``.

    ``u``, ``back_m``: fp32 (B, m, n), ``m`` fp32 or bf16; ``row`` (B, m) and ``col`` (B, n): the residual's
    row/column mean squares; ``g_row`` (B, m): the gradient's row mean squares; ``mask`` (B,)
    bool: the blocks with a complement; ``bc1``/``bc2``: floats or fp32 (B, 1, 1);
    ``mr = max(mean(row), 1e-30)``, ``floor = RES_FLOOR^2 mean(g_row)``. **``back_m`` is
    overwritten** (with the scaled residual). The operations, in order (all fp32, every one
    rounded), with the denominator's reciprocal in the factors of :func:`complement_reciprocals`::

        r = (-back_m) + m
        t = min(ia_i * ib_j, fi)          ia = 1/sqrt(row / bc2), ib = 1/sqrt(cs), fi = 1/(sqrt(floor / bc2) + eps)
        u = u + (r * t) * (mask / bc1)

    That is Adam's ``r / (sqrt(v) + eps)`` with ``eps`` moved onto the floor (``max(x, f) + eps`` and
    ``max(x, f + eps)`` differ by ``eps`` only where ``x >= f``, and ``f`` is ``RES_FLOOR`` of the
    gradient's RMS). Per element: two products, a minimum, a product and a sum, no division: the
    IEEE division it replaces cost the applied kernel about a quarter of its time
    (``bench.complement_probe``'s approximate one: 28%, BENCHMARKS.md §0g). ``torch.minimum``
    propagates NaN. ``stats``: ``(cs, floor)`` as :func:`residual_stats` returned them (else computed
    here from ``row``, ``col``, ``g_row``). ``hyper``: ``bc2`` is its 0-d fp32 ``bc2`` and the scale
    :func:`hyper_scale`, the float ``bc1``, ``bc2`` ignored.
    """
    res_m = back_m.neg_().add_(m)
    cs, floor, scale = complement_vectors(row, col, g_row, mask, bc1, stats, hyper)
    ia, ib, fi = complement_reciprocals(row, cs, floor, hyper.bc2 if hyper is not None else bc2, eps)
    t = torch.minimum(ia.unsqueeze(-1) * ib.unsqueeze(-2), fi[:, None, None])
    res_m.mul_(t).mul_(scale)
    return u.add_(res_m)


def complement_reciprocals(
    row: Tensor, cs: Tensor, floor: Tensor, bc2: Tensor | float, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """The reciprocal of the complement's denominator in factors: ``1/sqrt(row_i / bc2)`` (B, m),
    ``1/sqrt(cs_j)`` (B, n) and ``1/(sqrt(floor / bc2) + eps)`` (B,), so that
    ``1 / max(sqrt(row_i cs_j / bc2), sqrt(floor / bc2) + eps) = min(ia_i ib_j, fi)`` (up to the
    rounding of the two reciprocals). Square roots correctly rounded (:func:`quant.sqrt_rn`) and
    divisions IEEE (a float ``bc2`` as a 0-d fp32 tensor; ``bc2`` per block (B, 1, 1) divides its
    block's rows), so every device forms the same vectors; shared by the twin and the kernel's
    wrapper. A zero row or column gives an infinite factor, which the minimum turns into ``fi``
    (finite: ``eps > 0``)."""
    if not isinstance(bc2, Tensor):
        bc2 = torch.full((), bc2, dtype=torch.float32, device=row.device)
    if bc2.numel() not in (1, row.shape[0]) or any(d != 1 for d in bc2.shape[1:]):
        raise ValueError(
            f"the complement's bc2 must be a float or one value per block (shape (B, 1, 1)), got shape "
            f"{tuple(bc2.shape)}: a bias correction that varies inside a block does not factor into row "
            "and column roots"
        )
    per = bc2.to(row.device).reshape(-1)  # (1,) or (B,)
    a, b, f = quant.sqrt_rn(row / per[:, None]), quant.sqrt_rn(cs), quant.sqrt_rn(floor / per)
    return 1.0 / a, 1.0 / b, 1.0 / (f + eps)


def lowrank(x: Tensor, y: Tensor) -> Tensor:
    """``X Y^T`` for stacked ``X`` (B, m, k) and ``Y`` (B, n, k), each fp32 or bf16: fp32 (B, m, n), the fp32
    product of their exact fp32 values."""
    return x.float() @ y.float().mT


def sums_of_squares(x: Tensor) -> tuple[Tensor, Tensor]:
    """Row and column sums of ``x**2`` for stacked ``(B, m, n)`` ``x``: ``(B, m)`` and ``(B, n)``.

    Two norm reductions, each reading ``x`` once and writing only its result (``x.square()``
    followed by two sums writes and reads a full-size temporary)."""
    return (
        torch.linalg.vector_norm(x, dim=-1).square_(),
        torch.linalg.vector_norm(x, dim=-2).square_(),
    )


def residual_sumsq(
    g: Tensor, x: Tensor | None = None, y: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """Row and column sums of squares of ``G`` (B, m, n) and, given ``X`` (B, m, k) and ``Y`` (B, n, k),
    of the residual ``G - X Y^T``: ``(g_row (B, m), g_col (B, n), r_row, r_col)`` (``None, None``
    without ``X, Y``); ``G`` fp32 or bf16, everything else fp32. Nothing is updated in place."""
    g = g.float()
    g_row, g_col = sums_of_squares(g)
    if x is None or y is None:
        return g_row, g_col, None, None
    r_row, r_col = sums_of_squares(g - lowrank(x, y))
    return g_row, g_col, r_row, r_col


ALIGN = 64
"""Bytes every :class:`WeightBlocks` address is a multiple of."""


@dataclasses.dataclass(frozen=True)
class WeightBlocks:
    """``B`` weight blocks of shape (m, n) that live inside their parameters, not in one stacked tensor:
    ``views`` (each with row stride ``ld`` and unit column stride, e.g. the column blocks of wider
    weights) and ``table``, their addresses as an int64 tensor on the weights' device (built and kept
    by the caller: a captured step must not copy it from the host). :func:`complement_update`
    updates them where they are: the kernel through the table, this twin through a stacked copy."""

    views: list[Tensor]
    table: Tensor
    ld: int

    @classmethod
    def of(cls, views: Sequence[Tensor], table: Tensor) -> WeightBlocks | None:
        """The blocks ``views`` with their address ``table``; ``None`` unless they share one shape, dtype,
        device and row stride with unit column stride, start on 64-byte boundaries (the kernel tells
        the compiler so, for vector loads), and ``table`` holds their addresses."""
        v0 = views[0] if views else None
        if v0 is None or v0.dim() != 2 or any(
            v.shape != v0.shape or v.dtype != v0.dtype or v.device != v0.device or v.stride() != (v0.stride(0), 1)
            for v in views
        ):  # fmt: skip
            return None
        if table.dtype != torch.int64 or table.shape != (len(views),) or table.device != v0.device:
            return None
        if any(v.data_ptr() % ALIGN for v in views):
            return None
        return cls(list(views), table, v0.stride(0))

    @property
    def shape(self) -> torch.Size:
        """(B, m, n), as the stacked tensor's (so :func:`.apply.weights_ok` reads blocks as it reads one)."""
        return torch.Size((len(self.views), *self.views[0].shape))

    @property
    def dtype(self) -> torch.dtype:
        return self.views[0].dtype

    @property
    def device(self) -> torch.device:
        return self.views[0].device

    def stacked(self) -> Tensor:
        return torch.stack(self.views)

    def write(self, w: Tensor) -> None:
        for v, x in zip(self.views, w.unbind(0), strict=True):
            v.copy_(x)


def complement_update(
    m: Tensor,
    xu: Tensor,
    yu: Tensor,
    xm: Tensor,
    ym: Tensor,
    row: Tensor,
    col: Tensor,
    g_row: Tensor,
    mask: Tensor,
    bc1: Tensor | float,
    bc2: Tensor | float,
    eps: float,
    w: Tensor | WeightBlocks | None = None,
    rho: Tensor | None = None,
    lr: float = 0.0,
    wd: float = 0.0,
    stats: tuple[Tensor, Tensor] | None = None,
    hyper: StepScalars | None = None,
) -> Tensor | None:
    """The update of a truncated basis with its complement: ``U = X_u Y_u^T`` (the basis' Adam step
    mapped back) plus :func:`complement_add_` of the first moment's residual ``M - X_m Y_m^T``.
    Returns ``U`` as a new fp32 (B, m, n) tensor; or, given the weights ``w`` (and correction bits
    ``rho``), applies it with :func:`apply_update_` and returns ``None``; ``w`` may be
    :class:`WeightBlocks` (updated where they live). ``m`` is not changed. ``stats``: see
    :func:`complement_add_`. ``hyper``: ``bc1``, ``bc2`` (and ``lr``, ``c = 1 - lr wd`` for the weights)
    from it, the float arguments ignored."""
    u = complement_add_(lowrank(xu, yu), lowrank(xm, ym), m, row, col, g_row, mask, bc1, bc2, eps, stats, hyper)
    if w is None:
        return u
    if isinstance(w, WeightBlocks):
        stacked = w.stacked()
        apply_update_(stacked, rho, u, lr, wd, hyper=hyper)
        w.write(stacked)
        return None
    apply_update_(w, rho, u, lr, wd, hyper=hyper)
    return None


def finite_flag(tensors: Sequence[Tensor]) -> Tensor | None:
    """Is every value of every tensor finite? A 0-d device bool (``None`` for no tensors), not waited for.

    One multi-tensor launch for the largest ``|x|`` of each tensor, then their largest below ``inf``:
    a NaN anywhere makes its maximum NaN, and ``NaN < inf`` is False."""
    if not tensors:
        return None
    norms = torch._foreach_norm(list(tensors), ord=float("inf"))
    return torch.stack(norms).max() < float("inf")  # (stack promotes mixed dtypes)


def finite_gather(
    checks: Sequence[Tensor], copies: Sequence[tuple[Tensor, Tensor]], keep: list | None = None
) -> Tensor | None:
    """``dst.copy_(src)`` for every pair of ``copies``, and :func:`finite_flag` of ``checks`` and the
    sources: are all their values finite? (``None`` when there is nothing to check; ``keep``: unused,
    the kernel's tables.)"""
    for src, dst in copies:
        dst.copy_(src)
    return finite_flag([*checks, *(src for src, _ in copies)])
