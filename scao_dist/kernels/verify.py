"""Kernel-vs-twin comparisons, shared by ``tests/test_kernels.py`` (Triton interpreter) and ``bench/kernels.py`` (GPU).

Each case builds fresh random operands (wide magnitudes, some exact-zero groups/rows), runs the
Triton kernel and its plain-torch twin on separate copies, and compares every in-place tensor
and the returned tensor:

* integer outputs (codes, correction bits) and bf16 outputs (scales, weights) bit for bit;
* the fp32 factor diagonal of ``factor_ema_corr_`` bit for bit too (``Case.exact``);
* fp32 outputs within ``FP32_RTOL`` = 2^-22 relative (4 unit roundoffs, i.e. 2-4 ulp; atol 0).
  The kernels restate the twin's fp32 operations in the same order with IEEE division and square
  root and no FMA, so on the interpreter they agree bit for bit; the margin only covers a backend
  that would contract or reorder an operation. A NaN where the twin has a number (an unwritten
  poisoned output) fails.

Two modes per case. ``"state"``: random valid old state (the decode path), its padding lanes
poisoned. ``"overwrite"``: beta = 0 (and ``lr·wd = 1`` for the apply) so the new state does not
depend on the old one, and every in-place tensor starts poisoned (int8 codes/bits -128 and int16
bits -32768, which the encoders never produce; uint8 codes 77; scales, factor diagonals and
weights 1e30): an element a kernel fails to write keeps its poison and mismatches. Returned tensors are NaN-filled
by the kernels (``common.POISON_OUTPUTS``). The one blind spot is a uint8 code that should be 77.

The low-rank kernels (``residual_sumsq``, ``complement_update``) form products ``X Y^T`` with a
``tl.dot`` where the twin calls ``torch.matmul``. Their ``"exact"`` cases make every product exact
in any order and precision: each block's ``X`` and ``Y`` have one nonzero column (the same one, past
the first ``tl.dot`` chunk when ``k > 32``) holding TF32-representable values, so each entry of
``X Y^T`` is one product of two 11-bit mantissas. ``complement_update``'s result is then compared bit
for bit (its tail restates :func:`reference.complement_add_`; the returned tensor is NaN-poisoned,
so an unwritten element fails); ``residual_sumsq``'s sums within the reordering bound of a sum of
``n`` positive terms (``n`` x 2^-24 relative). Their ``"dense"`` cases use full random factors with
the gradient close to ``X Y^T`` (cancellation, as in training) and compare within a tolerance scaled
by the magnitudes involved: ``2^-16`` of them in full fp32, ``2^-8`` with TF32 products.

``hyper`` cases (``rotated_adam_``, ``apply_update_``, ``adamw_``, ``complement_update``; the builders'
``hyper=True``, :func:`with_hyper`) call both sides as a captured step does: the step's ``lr``,
``1 - lr wd`` and bias corrections in a :class:`.scalars.StepScalars` row on the case's device, and
decoys (:data:`HYPER_DECOYS`) in the float arguments, which both sides must ignore.
``extra["floats"]`` keeps the floats, so :func:`float_kwargs` gives the same call without the row
(bit for bit the same results: ``tests/kernel_checks.py``, ``tests/test_step_scalars.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from .. import quant
from . import common, reference, scalars
from .scalars import StepScalars

FP32_RTOL = 2.0**-22
"""Relative tolerance of fp32 outputs: 4 x fp32's unit roundoff 2^-24 (2-4 ulp)."""

KERNELS = (
    "ema_signed_",
    "rotated_adam_",
    "apply_update_",
    "factor_ema_corr_",
    "adamw_",
    "residual_sumsq",
    "residual_stats",
    "complement_update",
)

POISON = {torch.int8: -128, torch.uint8: 77, torch.int16: -32768, torch.bfloat16: 1e30, torch.float32: 1e30}


@dataclass
class Case:
    """One call: keyword arguments, which of them are updated in place, and a label."""

    kernel: str
    label: str
    kwargs: dict[str, Any]
    inplace: Sequence[str]
    exact: Sequence[str] = ()
    """fp32 in-place tensors compared bit for bit (as their int32 bit patterns) instead of within FP32_RTOL."""
    extra: dict[str, Any] = field(default_factory=dict)
    rtol: float = FP32_RTOL
    """Relative tolerance of fp32 outputs compared within a tolerance."""
    atol: Any = None
    """Absolute tolerance of the returned value (a tensor, or a tuple like it), on top of ``rtol``."""
    inplace_rtol: float = FP32_RTOL
    """Relative tolerance of fp32 in-place tensors (not in ``exact``)."""


# ------------------------------------------------------------------------------ random data
def wide(shape: Sequence[int], gen: torch.Generator, device: torch.device, decades: float = 12.0) -> Tensor:
    """fp32 normals times 10^U(-decades, decades) per scale group of 32, plus 1-decade jitter per value."""
    n = shape[-1] if len(shape) else 1
    groups = max(1, math.ceil(n / 32))
    lead = tuple(shape[:-1])
    g_mag = (torch.rand(*lead, groups, generator=gen) * 2 - 1) * decades
    mag = g_mag.repeat_interleave(32, dim=-1)[..., :n] + torch.rand(*shape, generator=gen) - 0.5
    x = torch.randn(*shape, generator=gen) * torch.pow(10.0, mag)
    return x.to(device)


def zero_groups(*ts: Tensor, gen: torch.Generator, frac: float = 0.2, group: int = 32) -> None:
    """Zero the same random whole groups of 32 (along the last dim) in every tensor (same shape)."""
    shape = ts[0].shape
    n = shape[-1]
    g = quant.n_groups(n, group)
    pick = torch.rand(*shape[:-1], g, generator=gen) < frac
    mask = pick.repeat_interleave(group, dim=-1)[..., :n].to(ts[0].device)
    for t in ts:
        t.masked_fill_(mask[..., : t.shape[-1]], 0)


def _codes_state(kind: str, shape: Sequence[int], gen: torch.Generator, device: torch.device) -> tuple[Tensor, Tensor]:
    """A random valid packed state: codes in range, positive bf16 scales of wide range, some zero groups."""
    n = shape[-1]
    G = quant.n_groups(n)
    lead = tuple(shape[:-1])
    if kind == "signed":
        codes = torch.randint(-127, 128, (*lead, G * 32), generator=gen, dtype=torch.int64).to(torch.int8)
    else:
        codes = torch.randint(0, 256, (*lead, G * 32), generator=gen, dtype=torch.int64).to(torch.uint8)
    scales = torch.pow(10.0, (torch.rand(*lead, G, generator=gen) * 2 - 1) * 10).to(torch.bfloat16)
    dead = torch.rand(*lead, G, generator=gen) < 0.2
    scales = scales.masked_fill(dead, 0)
    codes = codes.masked_fill(dead.repeat_interleave(32, dim=-1), 0)
    codes[..., n:] = POISON[codes.dtype]  # padding lanes are never read; the kernels must write 0 there
    return codes.to(device), scales.to(device)


def _poisoned(t: Tensor) -> Tensor:
    return torch.full_like(t, POISON[t.dtype])


def _bias(kind: str, shape: Sequence[int], gen: torch.Generator, device: torch.device) -> Tensor | float:
    """Bias correction as the optimizer passes it: a float, or one fp32 value per stacked block."""
    if kind == "float":
        return 0.1 + 0.9 * float(torch.rand((), generator=gen))
    return (0.05 + 0.95 * torch.rand(shape[0], *([1] * (len(shape) - 1)), generator=gen)).to(device)


HYPER_DECOYS = dict(lr=0.75, wd=0.5, bc1=0.3, bc2=0.7)
"""What a ``hyper`` case passes as the float arguments its :class:`StepScalars` replaces: values the
call must ignore (one that read them would compute something else)."""


def with_hyper(case: Case, lr: float, wd: float, bc1: float, bc2: float) -> Case:
    """``case`` called as a captured step calls it: ``hyper`` = ``StepScalars.of(lr, wd, bc1, bc2)`` on the
    case's device, :data:`HYPER_DECOYS` for the float arguments it stands for; ``extra["floats"]``: those
    arguments' true values (see :func:`float_kwargs`)."""
    device = next(v.device for v in case.kwargs.values() if isinstance(v, Tensor))
    floats = {k: v for k, v in dict(lr=lr, wd=wd, bc1=bc1, bc2=bc2).items() if k in case.kwargs}
    kw = {**case.kwargs, **{k: HYPER_DECOYS[k] for k in floats}, "hyper": StepScalars.of(lr, wd, bc1, bc2, device)}
    return replace(case, label=f"{case.label} hyper", kwargs=kw, extra={**case.extra, "floats": floats})


def shut(case: Case) -> Case:
    """``case`` with its row's gate shut (a captured step whose gradients hold a NaN/inf): the kernel and
    its twin must both leave every tensor they were given as it was (:func:`run_case` compares each with
    the case's own, bit for bit); what they return is read by nothing, so it is not compared. A case
    without a row gets one (its float arguments are then ignored)."""
    device = next(v.device for v in case.kwargs.values() if isinstance(v, Tensor))
    hyper = case.kwargs.get("hyper")
    row = hyper.row.clone() if hyper is not None else StepScalars.of(1e-2, 0.1, 0.5, 0.25, device).row
    row[scalars.GATE] = 0.0
    kw = {**case.kwargs, "hyper": StepScalars(row)}
    return replace(case, label=f"{case.label} gate shut", kwargs=kw, extra={**case.extra, "shut": True})


def float_kwargs(case: Case) -> dict[str, Any]:
    """The keyword arguments of a :func:`with_hyper` case's call without ``hyper``: the floats instead."""
    kw = {k: v for k, v in case.kwargs.items() if k != "hyper"}
    return {**kw, **case.extra["floats"]}


# ------------------------------------------------------------------------------ case builders
def case_ema(shape, mode, gen, device, xdtype=torch.float32, out_dtype=torch.float32) -> Case:
    x = wide(shape, gen, device).to(xdtype)
    if mode == "state":
        codes, scales = _codes_state("signed", shape, gen, device)
        zero_groups(x, gen=gen)
        beta = 0.9
    else:
        codes, scales = _codes_state("signed", shape, gen, device)
        codes, scales, beta = _poisoned(codes), _poisoned(scales), 0.0
        zero_groups(x, gen=gen)
    label = f"{mode} {tuple(shape)}" + (" bf16 x" if xdtype == torch.bfloat16 else "")
    label += " bf16 out" if out_dtype == torch.bfloat16 else ""
    return Case("ema_signed_", label, dict(codes=codes, scales=scales, x=x, beta=beta, out_dtype=out_dtype),
                ("codes", "scales"))  # fmt: skip


def case_rotated_adam(shape, mode, gen, device, bc=("float", "tensor"), hyper=False, floor=False) -> Case:
    """``hyper``: float bias corrections, passed as a :class:`StepScalars` (:func:`with_hyper`). ``floor``:
    one floor per leading index (as ``groups.KronGroup._rot_floor``), of the second moments' own wide
    range so that it binds on some values and not on others, one of them zero."""
    bc = ("float", "float") if hyper else bc
    g = wide(shape, gen, device, decades=10.0)
    m = wide(shape, gen, device)
    codes, scales = _codes_state("sqrt", shape, gen, device)
    zero_groups(g, gen=gen)
    beta2 = 0.999
    if mode == "overwrite":
        codes, scales, beta2 = _poisoned(codes), _poisoned(scales), 0.0
    kw = dict(codes=codes, scales=scales, g=g, m=m, beta2=beta2,
              bc1=_bias(bc[0], shape, gen, device), bc2=_bias(bc[1], shape, gen, device), eps=1e-8)  # fmt: skip
    if floor:
        f = wide((shape[0], 1), gen, device, decades=10.0).square()
        f[0] = 0.0
        kw["floor"] = f.reshape(shape[0], *[1] * (len(shape) - 1))
    label = f"{mode} {tuple(shape)} bc={bc}" + (" floor" if floor else "")
    case = Case("rotated_adam_", label, kw, ("codes", "scales"))
    return with_hyper(case, 1e-2, 0.1, kw["bc1"], kw["bc2"]) if hyper else case


def _weights(wdtype, bits, shape, gen, device, mode) -> tuple[Tensor, Tensor | None]:
    x = wide(shape, gen, device, decades=15.0)
    zero_groups(x, gen=gen, frac=0.1)
    if mode == "state" and x.numel():
        x.view(-1)[:: max(1, x.numel() // 7)] = 3e-39  # bf16 subnormals: the ulp's subnormal branch
    if wdtype == torch.float32:
        w, rho = x, None
    else:
        w, rho = quant.split_master(x, bits)
    if mode == "overwrite":
        w = _poisoned(w)
        rho = _poisoned(rho) if rho is not None else None
    return w, rho


def case_apply(shape, mode, gen, device, wdtype=torch.bfloat16, bits=8, hyper=False) -> Case:
    """``hyper``: ``lr``, ``wd`` passed as a :class:`StepScalars` (:func:`with_hyper`)."""
    w, rho = _weights(wdtype, bits, shape, gen, device, mode)
    ref_mag = w.float().abs() if mode == "state" else torch.ones(shape, device=device)
    decade = float(torch.randint(-6, 2, (), generator=gen))
    u = torch.randn(*shape, generator=gen).to(device) * (1.0 + ref_mag) * 10.0**decade
    if mode == "state" and u.numel() >= 14:  # where _weights put bf16 subnormals they stay subnormal (the
        u.view(-1)[:: u.numel() // 7] = 0.0  # ulp's smallest exponents, for the old and the new weight)
    lr, wd = (1e-2, 0.1) if mode == "state" else (1.0, 1.0)  # overwrite: x' = -u, the old w is multiplied by 0
    label = f"{mode} {tuple(shape)} {str(wdtype)[6:]}" + (f"+int{bits}" if rho is not None else "")
    case = Case("apply_update_", label, dict(w=w, rho=rho, u=u, lr=lr, wd=wd), ("w", "rho"))
    if not hyper:
        return case
    bc1, bc2 = (0.1 + 0.9 * float(torch.rand((), generator=gen)) for _ in range(2))  # not read by this step
    return with_hyper(case, lr, wd, bc1, bc2)


def _psd(lead: Sequence[int], d: int, gen: torch.Generator, device: torch.device, k: int = 5) -> Tensor:
    """Random psd ``A A^T`` (rank <= k): rows scaled by 10^U(-18, 16) (tiny, subnormal-range and
    huge entries, all finite), about a quarter of the rows exactly zero (zero diagonal, row and column)."""
    a = torch.randn(*lead, d, k, generator=gen, dtype=torch.float64)
    a *= torch.pow(10.0, torch.rand(*lead, d, 1, generator=gen, dtype=torch.float64) * 34 - 18)
    dead = torch.rand(*lead, d, 1, generator=gen) < 0.25
    if d > 1:
        dead[..., 0, :] = True  # at least one zero row besides the random ones
    a = a.masked_fill(dead, 0.0).float()
    return (a @ a.mT).to(device)


def _boundary_outer(codes: Tensor, diag: Tensor, seed: Tensor | int, gen: torch.Generator) -> Tensor:
    """An ``outer`` for beta = 1/2 that puts ``127 c + u`` within a few ulps of an integer for every
    off-diagonal entry (``c`` the new correlation, ``u`` the dither), so the floor of every code is
    decided by the last bits of the fp32 arithmetic: a kernel that rounds one operation differently
    from the twin (order, FMA, approximate division/sqrt) changes many codes, not one in 10^5."""
    lead, d, dev = tuple(codes.shape[:-2]), codes.shape[-1], codes.device
    dec = quant.decode_corr(codes, diag).double()
    od = (diag.cpu() * torch.pow(10.0, torch.rand(*lead, d, generator=gen) * 2 - 1)).to(dev)
    new = (diag * 0.5 + od * 0.5).clamp_min(0.0)  # the twin's f_ii and new diagonal
    inv = torch.where(new > 0, 1.0 / quant.sqrt_rn(torch.where(new > 0, new, 1.0)), 0.0).double()
    idx = torch.arange(d * d, device=dev, dtype=torch.int64).reshape(d, d)
    seed_t = torch.as_tensor(seed, dtype=torch.int64, device=dev)
    u = quant.hash_uniform(idx, seed_t.reshape(*seed_t.shape, 1, 1) if seed_t.ndim else seed_t).double()
    k = torch.randint(-100, 101, (*lead, d, d), generator=gen).to(dev).double()
    scale = inv.unsqueeze(-1) * inv.unsqueeze(-2)
    f = torch.where(scale > 0, (k - u) / 127.0 / torch.where(scale > 0, scale, 1.0), 0.0)
    outer = ((f - dec * 0.5) / 0.5).float()
    torch.diagonal(outer, dim1=-2, dim2=-1).copy_(od)
    return outer


def case_factor(lead, d, mode, gen, device, seed_kind="tensor") -> Case:
    """``factor_ema_corr_`` on ``(*lead, d, d)``. ``state``: fresh psd ``outer``, random valid codes
    and a diagonal near ``outer``'s (10^U(-2, 2) times it; some zero where ``outer``'s is not, and
    the other way round); ``overwrite``: fresh psd ``outer``, beta = 0, codes and diagonal poisoned;
    ``boundary``: random valid state, beta = 1/2 and an ``outer`` that puts every code on a rounding
    edge (:func:`_boundary_outer`; not psd)."""
    lead = tuple(lead)
    if seed_kind == "tensor":
        seed = torch.randint(-(2**40), 2**40, lead, generator=gen, dtype=torch.int64).to(device)
    else:
        seed = int(torch.randint(0, 2**31, (), generator=gen))
    outer = _psd(lead, d, gen, device)
    if mode in ("state", "boundary"):
        codes = torch.randint(-127, 128, (*lead, d, d), generator=gen, dtype=torch.int64).to(torch.int8).to(device)
        od = torch.diagonal(outer, dim1=-2, dim2=-1).cpu()
        if mode == "boundary":
            od = torch.pow(10.0, torch.rand(*lead, d, generator=gen) * 30 - 15)
        base = torch.where(od > 0, od, torch.pow(10.0, torch.rand(*lead, d, generator=gen) * 20 - 10))
        diag = base * torch.pow(10.0, torch.rand(*lead, d, generator=gen) * 4 - 2)
        dead = torch.rand(*lead, d, generator=gen) < 0.2
        diag = diag.masked_fill(dead, 0.0).to(device)
        codes.masked_fill_(dead.to(device)[..., None], 0)
        beta = 0.95
        if mode == "boundary":
            outer, beta = _boundary_outer(codes, diag, seed, gen), 0.5
    else:
        codes = torch.full((*lead, d, d), POISON[torch.int8], dtype=torch.int8, device=device)
        diag = torch.full((*lead, d), POISON[torch.float32], device=device)
        beta = 0.0
    return Case("factor_ema_corr_", f"{mode} lead={lead} d={d} seed={seed_kind}",
                dict(codes=codes, diag=diag, outer=outer, beta=beta, seed=seed), ("codes", "diag"),
                exact=("diag",))  # fmt: skip


def case_adamw(shape, mode, gen, device, wdtype=torch.bfloat16, bits=8, bc=("float", "float"), hyper=False,
               gdtype=torch.float32) -> Case:  # fmt: skip
    """``hyper``: ``lr``, ``wd`` and float bias corrections passed as a :class:`StepScalars` (:func:`with_hyper`);
    ``gdtype``: the gradient's dtype (bf16: what a group of bf16 parameters passes)."""
    bc = ("float", "float") if hyper else bc
    w, rho = _weights(wdtype, bits, shape, gen, device, mode)
    g = wide(shape, gen, device, decades=10.0)
    zero_groups(g, gen=gen)
    g = g.to(gdtype)
    mc, ms = _codes_state("signed", shape, gen, device)
    vc, vs = _codes_state("sqrt", shape, gen, device)
    hp = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, wd=0.1)
    if mode == "overwrite":
        mc, ms, vc, vs = (_poisoned(t) for t in (mc, ms, vc, vs))
        hp.update(lr=1.0, wd=1.0, beta1=0.0, beta2=0.0)
    kw = dict(w=w, rho=rho, g=g, m_codes=mc, m_scales=ms, v_codes=vc, v_scales=vs,
              bc1=_bias(bc[0], shape, gen, device), bc2=_bias(bc[1], shape, gen, device), **hp)  # fmt: skip
    label = f"{mode} {tuple(shape)} {str(wdtype)[6:]}" + (f"+int{bits}" if rho is not None else "") + f" bc={bc}"
    label += " bf16 g" if gdtype == torch.bfloat16 else ""
    case = Case("adamw_", label, kw, ("w", "rho", "m_codes", "m_scales", "v_codes", "v_scales"))
    return with_hyper(case, kw["lr"], kw["wd"], kw["bc1"], kw["bc2"]) if hyper else case


def _tf32_on(device: torch.device) -> bool:
    """Do the kernels' products run in TF32 here (as torch's fp32 matmuls then do)?"""
    return device.type == "cuda" and bool(torch.backends.cuda.matmul.allow_tf32)


def _exact_factors(B: int, M: int, N: int, k: int, gen: torch.Generator, device: torch.device,
                   decades: int = 20, bf16: str | None = None) -> tuple[Tensor, Tensor]:  # fmt: skip
    """``X`` (B, M, k), ``Y`` (B, N, k) whose product is exact in any order and precision: one nonzero
    column per block (the last one, so with ``k > 32`` a later ``tl.dot`` chunk), entries
    ``±(1 + j/1024) 2^e`` with integer ``j < 1024`` and ``|e| <= decades`` (TF32-exact, 11 significant bits).
    ``bf16``: ``"x"`` or ``"y"``, that factor bf16 with 8 significant bits (as a stored basis)."""

    def vals(*shape: int, bits: int = 10) -> Tensor:
        mant = 1 + torch.randint(0, 2**bits, shape, generator=gen) / 2**bits
        sign = torch.randint(0, 2, shape, generator=gen) * 2 - 1
        return sign * mant * torch.pow(2.0, torch.randint(-decades, decades + 1, shape, generator=gen).float())

    x, y = torch.zeros(B, M, k), torch.zeros(B, N, k)
    if k:
        x[..., -1] = vals(B, M, bits=7 if bf16 == "x" else 10)
        y[..., -1] = vals(B, N, bits=7 if bf16 == "y" else 10)
    return _as_basis(x.to(device), y.to(device), bf16)


def _dense_factors(B: int, M: int, N: int, k: int, gen: torch.Generator, device: torch.device,
                   bf16: str | None = None) -> tuple[Tensor, Tensor]:  # fmt: skip
    x, y = torch.randn(B, M, k, generator=gen), torch.randn(B, N, k, generator=gen)
    return _as_basis(x.to(device), y.to(device), bf16)


def _as_basis(x: Tensor, y: Tensor, bf16: str | None) -> tuple[Tensor, Tensor]:
    """``X``, ``Y`` with the factor named by ``bf16`` (``"x"``, ``"y"``, or ``None``) rounded to bf16 and
    stored as a stream basis is, the first ``k`` columns of a wider tensor (the probes after them),
    when ``k`` is a multiple of 16 (else contiguous: the kernels copy a padded rank anyway)."""
    if bf16 is None:
        return x, y
    t = x if bf16 == "x" else y
    k = t.shape[-1]
    if k and k % 16 == 0:
        wide_t = torch.full((*t.shape[:-1], k + 16), 7.0, dtype=torch.bfloat16, device=t.device)
        wide_t[..., :k] = t
        t = wide_t[..., :k]
    else:
        t = t.to(torch.bfloat16)
    return (t, y) if bf16 == "x" else (x, t)


def case_residual(shape, mode, gen, device, gdtype=torch.float32, bf16=None) -> Case:
    """``residual_sumsq`` on (B, m, n) with rank ``k`` factors (``shape = (B, m, n, k)``; ``k = None``:
    no factors, the sums of ``G`` alone). ``exact``: ``G = X Y^T + R`` with ``R`` wide and some zero
    groups (an exactly zero residual there); ``dense``: random factors and ``G = X Y^T + 10^-3 R``.
    ``gdtype`` bf16: ``G`` rounded to bf16 (as the step passes a bf16 gradient). ``bf16``: ``"x"`` or
    ``"y"``, that factor a bf16 basis (:func:`_as_basis`)."""
    B, M, N, k = shape
    kk = k or 0
    x, y = (_exact_factors if mode == "exact" else _dense_factors)(B, M, N, kk, gen, device, bf16=bf16)
    back = reference.lowrank(x, y)
    r = wide((B, M, N), gen, device, 6.0) if mode == "exact" else 1e-3 * torch.randn(B, M, N, generator=gen).to(device)
    if mode == "exact":
        zero_groups(r, gen=gen)
    g = (back + r).to(gdtype)
    kw = dict(g=g, x=x if k is not None else None, y=y if k is not None else None)
    rtol = 4.0 * max(M, N, 1) * 2.0**-24  # reordered sums of positive terms
    atol = None
    if mode == "dense":
        tol = 2.0**-8 if _tf32_on(device) else 2.0**-16
        mag = g.abs() + reference.lowrank(x.abs(), y.abs())
        atol = (tol * (g * g).sum(-1), tol * (g * g).sum(-2), tol * (mag * mag).sum(-1), tol * (mag * mag).sum(-2))
    label = f"{mode} {tuple(shape)}" + (" bf16 G" if gdtype == torch.bfloat16 else "") + _bf16_label(bf16)
    return Case("residual_sumsq", label, kw, (), rtol=rtol, atol=atol)


def _bf16_label(bf16: str | None) -> str:
    shared = {"shared": " bf16 Y shared", "shared16": " bf16 Y shared, bf16 X_u", "shared_all": " every factor bf16"}
    return {None: "", "x": " bf16 X", "y": " bf16 Y", **shared}[bf16]


def case_residual_stats(shape, mode, gen, device, gdtype=torch.float32, mask="every") -> Case:
    """``residual_stats`` on (B, m, n) with rank ``k`` factors (``shape = (B, m, n, k)``; ``k = None``:
    no residual, only the gradient's statistics) and positive random old statistics. ``G`` as in
    :func:`case_residual` (``"exact"``: the products and so the residual exact; sums with inexact
    products are :func:`case_residual`'s ``"dense"`` cases, same kernel). ``mask``: ``"every"``
    (all blocks truncated) or ``"some"`` (a random mask, block 0 off). The sums over tiles and rows
    run in another order than the twin's, all of positive terms: fp32 outputs within
    ``4 (m + n) 2^-24`` relative."""
    B, M, N, _ = shape
    base = case_residual(shape, mode, gen, device, gdtype)
    kw = dict(base.kwargs)

    def stat(*s: int) -> Tensor:
        return torch.pow(10.0, torch.rand(*s, generator=gen) * 6 - 3).to(device)

    kw.update(g_row=stat(B, M), g_col=stat(B, N), res_row=stat(B, M), res_col=stat(B, N), beta2=0.95)
    if mask == "every":
        kw.update(mask=torch.ones(B, dtype=torch.bool, device=device), every=True)
    else:
        pick = torch.rand(B, generator=gen) < 0.5
        pick[0] = False
        kw.update(mask=pick.to(device), every=False)
    rtol = 4.0 * (M + N + 2) * 2.0**-24
    label = f"{mode} {tuple(shape)} {mask}" + (" bf16 G" if gdtype == torch.bfloat16 else "")
    inplace = ("g_row", "g_col", "res_row", "res_col")
    return Case("residual_stats", label, kw, inplace, rtol=rtol, inplace_rtol=rtol)


def case_complement_update(
    shape, mode, gen, device, bc=("float", "float"), k=(40, 40), apply=None, hyper=False, bf16=None
) -> Case:
    """``complement_update`` on (B, m, n), ``k = (k_u, k_m)`` the ranks of ``X_u Y_u^T`` and ``X_m Y_m^T``.

    * ``exact``: exact products (:func:`_exact_factors`), ``m`` wide with random signs and equal to
      ``X_m Y_m^T`` on some whole groups (zero residual); row/col mean squares 10^U(-12, 12) with
      about a fifth of the rows and columns exactly 0; with B > 1 block 1's row, col and ``g_row``
      all 0 (floor 0: the denominator is ``eps``); with B > 2 the last block masked off. Bit for bit.
    * ``nan``: as ``exact``, plus block 0's row all 0 and every third of its columns above 3.4e8, so
      ``col / 1e-30`` is inf and ``row_i cs_j = 0·inf`` NaN there: the maximum must propagate NaN
      (compared within the fp32 tolerance, NaN == NaN, since NaN payloads differ between backends).
    * ``dense``: random factors, ``m = X_m Y_m^T + 10^-3 noise``; within a tolerance scaled by the
      magnitudes (the twin run on ``|X_u|, |Y_u|, -|X_m|, |Y_m|`` and ``m = 0``).

    ``apply = (weight dtype, bits)``: the update is applied to random weights (as
    :func:`case_apply`'s ``state`` mode) in place instead of returned; ``exact`` compares them bit
    for bit, ``dense`` the fp32 values they stand for, within ``lr`` times ``U``'s tolerance plus
    one rounding of the stored weight.

    ``hyper``: float bias corrections (and ``lr``, ``wd``) passed as a :class:`StepScalars` (:func:`with_hyper`).
    ``bf16``: ``"x"`` or ``"y"``, those factors bf16 bases (:func:`_as_basis`); ``"shared"``: as ``"y"``
    with ``Y_m`` the tensor ``Y_u`` (a two-sided basis' ``Q_R``; needs ``k_u = k_m``) and ``m`` in bf16;
    ``"shared16"``: as ``"shared"`` with ``X_u`` rounded to bf16 too, as the step of a two-sided stream block
    passes them (``KronGroup.u_dtype``); ``"shared_all"``: ``X_m`` too (``KronGroup.p_dtype``), every factor bf16
    (:data:`.lowrank.COMPLEMENT_BK_BF16`'s chunks).
    """
    bc = ("float", "float") if hyper else bc
    B, M, N = shape
    make = _dense_factors if mode == "dense" else _exact_factors
    shared = bf16 in ("shared", "shared16", "shared_all")
    side = "y" if shared else bf16
    xu, yu = make(B, M, N, k[0], gen, device, bf16=side)
    xm, ym = make(B, M, N, k[1], gen, device, bf16=side)
    if shared:
        ym = yu
    if bf16 in ("shared16", "shared_all"):
        xu = xu.to(torch.bfloat16)
    if bf16 == "shared_all":
        xm = xm.to(torch.bfloat16)
    back_m = reference.lowrank(xm, ym)
    if mode == "dense":
        m = back_m + 1e-3 * torch.randn(B, M, N, generator=gen).to(device)
    else:
        pick = torch.ones(shape, device=device)
        zero_groups(pick, gen=gen)  # whole groups of 0 where it picks: there m = X_m Y_m^T exactly
        m = torch.where(pick == 0, back_m, wide(shape, gen, device, 6.0))
    if shared:
        m = m.to(torch.bfloat16)
    row, col = wide((B, M), gen, device, 6.0).square(), wide((B, N), gen, device, 6.0).square()
    g_row = wide((B, M), gen, device, 6.0).square()
    row.masked_fill_((torch.rand(B, M, generator=gen) < 0.2).to(device), 0.0)
    col.masked_fill_((torch.rand(B, N, generator=gen) < 0.2).to(device), 0.0)
    # every row of a block 0 while some column is not (possible only with few rows) makes 0 * inf = NaN
    # updates, which is the "nan" mode's case (a residual's row and column sums cannot do that: they add up
    # to the same total); here such a block gets one nonzero row
    row[:, 0] += torch.where((row.sum(-1) == 0) & (col.sum(-1) > 0), 1.0, 0.0)
    if B > 1:
        for t in (row, col, g_row):
            t[1] = 0.0
    mask = torch.ones(B, dtype=torch.bool)
    if B > 2:
        mask[-1] = False
    if mode == "nan":
        row[0] = 0.0
        col[0, ::3] = 1e9 + col[0, ::3]
    kw = dict(m=m, xu=xu, yu=yu, xm=xm, ym=ym, row=row, col=col, g_row=g_row, mask=mask.to(device),
              bc1=_bias(bc[0], shape, gen, device), bc2=_bias(bc[1], shape, gen, device), eps=1e-8)  # fmt: skip
    atol, rtol = None, FP32_RTOL
    if mode == "dense":
        tol = 2.0**-8 if _tf32_on(device) else 2.0**-16
        mag = dict(kw, m=torch.zeros_like(m), xu=xu.abs(), yu=yu.abs(), xm=-xm.abs(), ym=ym.abs())
        atol = tol * reference.complement_update(**mag)
    elif mode == "exact":
        rtol = 0.0  # bit for bit
    label = f"{mode} {tuple(shape)} k={k} bc={bc}" + _bf16_label(bf16)

    def done(case: Case) -> Case:
        return with_hyper(case, 1e-2, 0.1, kw["bc1"], kw["bc2"]) if hyper else case

    if apply is None:
        return done(Case("complement_update", label, kw, (), rtol=rtol, atol=atol))
    wdtype, bits = apply
    w, rho = _weights(wdtype, bits, shape, gen, device, "state")
    kw.update(w=w, rho=rho, lr=1e-2, wd=0.1)
    label += f" applied to {str(wdtype)[6:]}" + (f"+int{bits}" if rho is not None else "")
    if mode == "exact":
        return done(Case("complement_update", label, kw, ("w", "rho"), exact=("w",), rtol=FP32_RTOL))
    # U is compared within ``atol``: the weights then differ by up to lr·atol plus a step of the bits where the two
    # round the bits apart (ulp(w)/2R: up to 2^-7 |w| / 254 ~ 2^-15 |w| with int8 bits, at the bottom of a binade;
    # twice that allowed), so compare the weights they stand for
    master_rtol = FP32_RTOL if rho is None else 2.0 ** -(6 + 8 * rho.element_size())
    extra = {"master_atol": kw["lr"] * atol, "master_rtol": master_rtol}
    return done(Case("complement_update", label, kw, (), extra=extra))


# ------------------------------------------------------------------------------ comparison
def compare(
    name: str, got: Any, want: Any, exact: bool = False, rtol: float = FP32_RTOL, atol: Any = None
) -> list[str]:
    """Mismatch descriptions (empty when equal under the rules in the module docstring; ``exact``:
    fp32 bit for bit too; ``rtol``/``atol``: fp32 tolerances, ``atol`` shaped like ``got``). Tuples
    are compared item by item."""
    if isinstance(got, tuple) or isinstance(want, tuple):
        if not (isinstance(got, tuple) and isinstance(want, tuple) and len(got) == len(want)):
            return [f"{name}: tuple structure differs"]
        tols = atol if isinstance(atol, tuple) else (atol,) * len(got)
        return [
            e for j, (a, b) in enumerate(zip(got, want)) for e in compare(f"{name}[{j}]", a, b, exact, rtol, tols[j])
        ]
    if got is None or want is None:
        return [] if got is None and want is None else [f"{name}: one side is None"]
    if got.shape != want.shape or got.dtype != want.dtype:
        return [f"{name}: shape/dtype {tuple(got.shape)} {got.dtype} vs {tuple(want.shape)} {want.dtype}"]
    if got.dtype == torch.float32 and exact:
        bad = got.view(torch.int32) != want.view(torch.int32)
        if bool(bad.any()):
            diff = (got - want).abs()[bad]
            return [f"{name}: {int(bad.sum())}/{got.numel()} fp32 values not bit-identical "
                    f"(max |diff| {float(diff.nan_to_num(float('inf')).max()):.3e}, nan in kernel output: "
                    f"{int(got.isnan().sum())})"]  # fmt: skip
        return []
    if got.dtype == torch.float32:
        diff = (got - want).abs()
        bound = rtol * want.abs() + (atol if atol is not None else 0.0)
        bad = ~(diff <= bound) & ~(got.isnan() & want.isnan()) & (got != want)
        if bool(bad.any()):
            k = int(bad.sum())
            return [f"{name}: {k}/{got.numel()} fp32 values off (max |diff| {float(diff[bad].max()):.3e}, "
                    f"nan in kernel output: {int(got.isnan().sum())})"]  # fmt: skip
        return []
    g = got.view(torch.int16) if got.dtype == torch.bfloat16 else got
    w = want.view(torch.int16) if want.dtype == torch.bfloat16 else want
    bad = g != w
    if bool(bad.any()):
        return [f"{name}: {int(bad.sum())}/{got.numel()} {str(got.dtype)[6:]} values differ"]
    return []


def _master(w: Tensor, rho: Tensor | None) -> Tensor:
    """The fp32 value that weights (and their correction bits) stand for."""
    return w.float() if rho is None else quant.join_master(w, rho)


def run_case(case: Case, ops: Any) -> list[str]:
    """Run ``ops.<kernel>`` and the twin on copies of the case; list the mismatches."""
    kw_k = {k: v.clone() if isinstance(v, Tensor) else v for k, v in case.kwargs.items()}
    kw_r = {k: v.clone() if isinstance(v, Tensor) else v for k, v in case.kwargs.items()}
    old = common.POISON_OUTPUTS
    common.POISON_OUTPUTS = True
    try:
        out_k = getattr(ops, case.kernel)(**kw_k)
    finally:
        common.POISON_OUTPUTS = old
    out_r = getattr(reference, case.kernel)(**kw_r)
    if case.extra.get("shut"):  # nothing may change, on either side
        errs = [
            e
            for name, v in case.kwargs.items()
            if isinstance(v, Tensor)
            for side, kw in (("kernel", kw_k), ("twin", kw_r))
            for e in compare(f"{name} ({side}, gate shut)", kw[name], v, exact=True)
        ]
        return [f"{case.kernel} [{case.label}] {e}" for e in errs]
    errs = compare("returned", out_k, out_r, exact=case.rtol == 0.0, rtol=case.rtol, atol=case.atol)
    for name in case.inplace:
        errs += compare(name, kw_k[name], kw_r[name], exact=name in case.exact, rtol=case.inplace_rtol)
    if "master_atol" in case.extra:  # weights updated by a U known only within a tolerance
        got, want = (_master(kw["w"], kw["rho"]) for kw in (kw_k, kw_r))
        errs += compare("weights", got, want, rtol=case.extra["master_rtol"], atol=case.extra["master_atol"])
    return [f"{case.kernel} [{case.label}] {e}" for e in errs]


# ------------------------------------------------------------------------------ suites
SMALL_ROWS = [(1, 1), (1, 31), (3, 33), (2, 5, 95), (7, 64), (3, 2, 700), (5, 1024), (2, 3, 48), (4, 40), (3, 18)]
"""Odd shapes (sizes not divisible by 32 or by the block sizes; batch 1 and more; 2 and 3 dims), and
rows of every alignment the group kernels are told (``common.group_layout``'s ``NMUL`` 1, 2, 4, 8,
16; 48 is a basis width 16 off the 32-column grid)."""
SMALL_COMPLEMENT = [(1, 1, 1), (3, 1, 7), (1, 33, 17), (3, 5, 95), (3, 19, 300), (1, 3, 513), (2, 70, 65)]
"""(B, m, n) of the low-rank cases: B = 1 and 3, n = 1, odd, above one [64, 64] tile in each dim."""
EVEN_COMPLEMENT = [(2, 64, 128), (1, 128, 64)]
"""(B, m, n) of low-rank cases whose [64, 64] tiles divide the block (the kernels then mask nothing)."""
SMALL_RANKS = [(0, 5), (1, 40), (16, 33), (40, 2)]
"""(k_u, k_m) of the complement cases: an empty basis, one rank, a full chunk, past the first chunk."""
SMALL_FACTORS = [((1,), 1), ((3,), 1), ((1,), 7), ((3,), 7), ((1,), 33), ((3,), 33), ((1,), 130), ((3,), 130), ((), 9)]
"""(lead dims, d) of the factor cases: d = 1, odd, not a multiple of the tile; B = 1 and 3; one bare (d, d)."""


def small_cases(gen: torch.Generator, device: torch.device) -> dict[str, list[Case]]:
    """The interpreter suite: every kernel and variant at small odd shapes, both modes."""
    out: dict[str, list[Case]] = {k: [] for k in KERNELS}
    for i, shape in enumerate(SMALL_ROWS):
        bc = (("float", "float"), ("tensor", "float"), ("float", "tensor"), ("tensor", "tensor"))[i % 4]
        for mode in ("state", "overwrite"):
            out["ema_signed_"].append(case_ema(shape, mode, gen, device))
            out["rotated_adam_"].append(case_rotated_adam(shape, mode, gen, device, bc=bc))
            if shape[0] > 1:  # the floor of a stream side's rotated second moment, one per block
                out["rotated_adam_"].append(case_rotated_adam(shape, mode, gen, device, bc=bc, floor=True))
            for wdtype, bits in ((torch.bfloat16, 8), (torch.bfloat16, 16), (torch.float32, 0)):
                out["apply_update_"].append(case_apply(shape, mode, gen, device, wdtype, bits))
            wdtype, bits = ((torch.bfloat16, 8), (torch.bfloat16, 16), (torch.float32, 0))[i % 3]
            out["adamw_"].append(case_adamw(shape, mode, gen, device, wdtype, bits, bc=bc))
    for i, shape in enumerate(SMALL_COMPLEMENT):
        bc = (("float", "float"), ("tensor", "float"), ("float", "tensor"), ("tensor", "tensor"))[i % 4]
        ks = SMALL_RANKS[i % len(SMALL_RANKS)]
        out["complement_update"].append(case_complement_update(shape, "exact", gen, device, bc=bc, k=ks))
        out["residual_sumsq"].append(case_residual((*shape, ks[1]), "exact", gen, device))
        out["residual_sumsq"].append(case_residual((*shape, None), "exact", gen, device))
    out["complement_update"].append(case_complement_update((3, 6, 40), "nan", gen, device, bc=("tensor", "tensor")))
    for j, ap in enumerate(((torch.bfloat16, 8), (torch.bfloat16, 16), (torch.float32, 0))):
        shape, bc = (
            SMALL_COMPLEMENT[(2 * j + 1) % len(SMALL_COMPLEMENT)],
            (("tensor", "float"), ("float", "tensor"))[j % 2],
        )
        out["complement_update"].append(
            case_complement_update(shape, "exact", gen, device, bc=bc, k=(16, 33), apply=ap)
        )
    out["complement_update"].append(case_complement_update((2, 70, 90), "dense", gen, device, k=(37, 70)))
    out["complement_update"].append(
        case_complement_update((2, 70, 90), "dense", gen, device, k=(37, 70), apply=(torch.bfloat16, 8))
    )
    out["residual_sumsq"].append(case_residual((2, 70, 90, 37), "dense", gen, device))
    for even in EVEN_COMPLEMENT:  # whole [64, 64] tiles: the kernels' unmasked loads and stores
        cu = out["complement_update"]
        cu.append(case_complement_update(even, "exact", gen, device, k=(16, 40)))
        bf16_8 = (torch.bfloat16, 8)
        cu.append(case_complement_update(even, "exact", gen, device, bc=("tensor", "float"), k=(40, 2), apply=bf16_8))
        cu.append(case_complement_update(even, "dense", gen, device, k=(33, 64), apply=(torch.float32, 0)))
        out["residual_sumsq"].append(case_residual((*even, 40), "exact", gen, device))
        out["residual_sumsq"].append(case_residual((*even, 33), "dense", gen, device, gdtype=torch.bfloat16))
        out["residual_stats"].append(case_residual_stats((*even, 16), "exact", gen, device, torch.float32, "some"))
    # stored bf16 bases as factors (dot_chunk's mixed products): strided slices (k % 16 == 0) and padded
    # copies, Y_m the tensor Y_u (loaded once), the left basis as X
    cu = out["complement_update"]
    for shape, ks, bf in (((3, 5, 95), (32, 32), "shared"), ((2, 70, 65), (33, 33), "shared"),
                          ((1, 33, 17), (16, 40), "y"), ((3, 19, 300), (40, 16), "x")):  # fmt: skip
        cu.append(case_complement_update(shape, "exact", gen, device, k=ks, bf16=bf))
    bf16_8 = (torch.bfloat16, 8)
    cu.append(case_complement_update((2, 64, 128), "exact", gen, device, k=(32, 32), apply=bf16_8, hyper=True,
                                     bf16="shared"))  # fmt: skip
    cu.append(case_complement_update((2, 70, 90), "dense", gen, device, k=(48, 48), apply=bf16_8, bf16="shared"))
    cu.append(case_complement_update((2, 70, 90), "dense", gen, device, k=(48, 48), apply=bf16_8, bf16="shared16"))
    cu.append(case_complement_update((3, 64, 96), "exact", gen, device, k=(32, 32), apply=bf16_8, bf16="shared16"))
    cu.append(case_complement_update((2, 70, 90), "dense", gen, device, k=(48, 48), apply=bf16_8, bf16="shared_all"))
    cu.append(case_complement_update((3, 64, 96), "exact", gen, device, k=(48, 48), bf16="shared_all"))
    cu.append(case_complement_update((2, 70, 90), "dense", gen, device, k=(37, 70), bf16="x"))
    for shape, bf in (((3, 19, 300, 32), "y"), ((2, 70, 65, 40), "x"), ((2, 64, 128, 16), "y")):
        out["residual_sumsq"].append(case_residual(shape, "exact", gen, device, torch.bfloat16, bf16=bf))
    out["residual_sumsq"].append(case_residual((2, 70, 90, 48), "dense", gen, device, torch.bfloat16, bf16="y"))
    # the bf16 gradient (and first moment) of a frame-less group, rows off and on the 32-value grid
    for shape in ((3, 5, 95), (2, 3, 48), (1, 31), (2, 4, 64)):
        out["ema_signed_"].append(case_ema(shape, "state", gen, device, xdtype=torch.bfloat16))
        out["ema_signed_"].append(case_ema(shape, "state", gen, device, torch.bfloat16, out_dtype=torch.bfloat16))
    out["ema_signed_"].append(case_ema((2, 70), "overwrite", gen, device, out_dtype=torch.bfloat16))
    for shape, hyper in (((5, 77), False), ((3, 130), True), ((1, 31), False)):  # bf16 parameters' AdamW
        out["adamw_"].append(case_adamw(shape, "state", gen, device, hyper=hyper, gdtype=torch.bfloat16))
    for shape in ((3, 19, 300, 16), (1, 33, 17, None), (2, 70, 65, 40)):
        out["residual_sumsq"].append(case_residual(shape, "exact", gen, device, gdtype=torch.bfloat16))
    out["residual_sumsq"].append(case_residual((2, 70, 90, 37), "dense", gen, device, gdtype=torch.bfloat16))
    for i, shape in enumerate(((1, 1, 1, 1), (3, 1, 7, 5), (3, 19, 300, 16), (2, 70, 65, None), (4, 33, 17, 40))):
        gd = torch.bfloat16 if i % 2 else torch.float32
        for mask in ("every", "some"):
            out["residual_stats"].append(case_residual_stats(shape, "exact", gen, device, gd, mask))
    for i, (lead, d) in enumerate(SMALL_FACTORS):
        for mode in ("state", "overwrite"):
            seed_kind = "int" if not lead or i % 3 == 2 else "tensor"
            out["factor_ema_corr_"].append(case_factor(lead, d, mode, gen, device, seed_kind))
    for lead, d in (((2,), 64), ((1,), 130)):
        out["factor_ema_corr_"].append(case_factor(lead, d, "boundary", gen, device))
    out["apply_update_"].append(case_apply((4099,), "state", gen, device))  # 1-D, 2 programs + tail
    # the step's scalars from a StepScalars row (a captured step), decoys in the float arguments
    weights = ((torch.bfloat16, 8), (torch.bfloat16, 16), (torch.float32, 0))
    for i, shape in enumerate(SMALL_ROWS):
        wdtype, bits = weights[i % 3]
        for mode in ("state", "overwrite"):
            out["rotated_adam_"].append(case_rotated_adam(shape, mode, gen, device, hyper=True, floor=i % 2 == 1))
            out["apply_update_"].append(case_apply(shape, mode, gen, device, wdtype, bits, hyper=True))
            out["adamw_"].append(case_adamw(shape, mode, gen, device, wdtype, bits, hyper=True))
    for i, shape in enumerate(SMALL_COMPLEMENT):
        ks = SMALL_RANKS[i % len(SMALL_RANKS)]
        ap = (None, *weights)[i % 4]
        out["complement_update"].append(case_complement_update(shape, "exact", gen, device, k=ks, apply=ap, hyper=True))
    out["complement_update"].append(case_complement_update((3, 6, 40), "nan", gen, device, hyper=True))
    for ap in (None, (torch.bfloat16, 16)):
        out["complement_update"].append(
            case_complement_update((2, 70, 90), "dense", gen, device, k=(37, 70), apply=ap, hyper=True)
        )
    for kernel, cs in out.items():  # a shut gate: every state-writing kernel, a few of its cases that write
        writing = [c for c in cs if kernel != "complement_update" or c.kwargs.get("w") is not None]
        if kernel != "residual_sumsq" and writing:
            picks = {0, len(writing) // 2, len(writing) - 1}
            cs += [shut(writing[j]) for j in sorted(picks)]
    return out


def run_cases(cases: dict[str, list[Case]], ops: Any, log: Callable[[str], None] | None = None) -> dict[str, list[str]]:
    """Run every case; ``{kernel: [mismatch, ...]}`` (empty lists when all match)."""
    res: dict[str, list[str]] = {}
    for kernel, cs in cases.items():
        errs: list[str] = []
        for c in cs:
            try:
                errs += run_case(c, ops)
            except Exception as e:  # a crash is a failure of that case, not of the whole suite
                errs.append(f"{c.kernel} [{c.label}] raised {type(e).__name__}: {e}")
        res[kernel] = errs
        if log is not None:
            log(f"{kernel}: {len(cs)} cases, {'ok' if not errs else f'{len(errs)} mismatches'}")
    return res


# ------------------------------------------------------------------------------ the NaN/inf check
GATHER_CHECKS = [(3, 5, 95), (1031,), (7, 64), (2, 3, 1100), (1,)]
"""Checked-only tensors of :func:`finite_gather_errors`: odd sizes, 1 to 3 dims, several tiles and ragged tails."""
GATHER_BLOCKS = [((37, 300), (150, 300)), ((20, 2100), (1001, 2100)), ((9, 4096), (0, 2048)), ((3, 40), (8, 16))]
"""(parent shape, column range) of each copied block: column blocks of wider matrices, one at an offset that
is not 16-byte aligned (the kernel's unhinted variant), one spanning two tiles of a row."""


def _gather_operands(
    gen: torch.Generator, device: torch.device, dtype: torch.dtype
) -> tuple[list[Tensor], list[Tensor], list[tuple[int, int]]]:
    """Random checked tensors and parents of the copied blocks: values of many magnitudes (finite in ``dtype``)."""
    big = 1e4 if dtype == torch.float16 else 1e30

    def vals(shape: Sequence[int]) -> Tensor:
        x = wide(shape, gen, torch.device("cpu"), decades=6.0).clamp(-big, big)
        return x.to(dtype).to(device)

    checks = [vals(s) for s in GATHER_CHECKS]
    parents = [vals(shape) for shape, _ in GATHER_BLOCKS]
    return checks, parents, [cols for _, cols in GATHER_BLOCKS]


GATHER_PLANTS = ("none", "nan check", "inf block", "-inf check", "nan outside block", "nan block last")
"""What :func:`finite_gather_errors` plants: nothing, or one non-finite value in a checked tensor, in a copied
block, or in a parent outside its block (which must not count)."""


def finite_gather_errors(
    ops: Any,
    gen: torch.Generator,
    device: torch.device,
    dtypes: Sequence[torch.dtype] = (torch.bfloat16, torch.float16, torch.float32, torch.float64),
    plants: Sequence[str] = GATHER_PLANTS,
) -> list[str]:
    """``ops.finite_gather`` against :func:`.reference.finite_gather` on fresh random operands: the flag equal and
    equal to what was planted (all finite, or one NaN / +inf / -inf in a checked tensor or a copied block,
    at random positions; a NaN in a parent outside its copied block must not count), every destination
    (poisoned before) bit for bit equal to its block on both sides. Per dtype the kernel reads (bf16, fp16,
    fp32; of bf16 and fp16 every other block copied into fp32), and once with operands it does not take (fp64,
    a copy that narrows: the twin's share)."""
    errs: list[str] = []
    for dtype in dtypes:
        for plant in plants:
            checks, parents, cols = _gather_operands(gen, device, dtype)
            want_ok = plant in ("none", "nan outside block")
            j = int(torch.randint(0, len(checks), (1,), generator=gen))
            p = int(torch.randint(0, len(parents), (1,), generator=gen))
            a, b = cols[p]
            rows = parents[p].shape[0]
            r = int(torch.randint(0, rows, (1,), generator=gen))
            if plant == "nan check":
                flat = checks[j].view(-1)
                flat[int(torch.randint(0, flat.numel(), (1,), generator=gen))] = math.nan
            elif plant == "-inf check":
                checks[j].view(-1)[-1] = -math.inf
            elif plant == "inf block":
                parents[p][r, a + int(torch.randint(0, b - a, (1,), generator=gen))] = math.inf
            elif plant == "nan block last":
                parents[p][rows - 1, b - 1] = math.nan
            elif plant == "nan outside block":
                outside = [c for c in range(parents[p].shape[1]) if not a <= c < b]
                parents[p][r, outside[int(torch.randint(0, len(outside), (1,), generator=gen))]] = math.nan
            extra_checks, extra_copies = [], []
            if dtype == torch.float64:  # the twin's share, and one copy that changes dtype
                extra_checks = [checks.pop()]
                src = parents[-1][:, cols[-1][0] : cols[-1][1]]
                extra_copies = [(src.float(), torch.full(src.shape, 7.0, dtype=torch.bfloat16, device=device))]
                checks = [c.float() for c in checks]
                parents = [q.float() for q in parents]
            blocks = [q[:, c0:c1] for q, (c0, c1) in zip(parents, cols)]
            sides = {}
            widen = dtype in (torch.bfloat16, torch.float16)  # every other block copied into fp32; poisoned below
            out = [torch.float32 if widen and i % 2 == 0 else blk.dtype for i, blk in enumerate(blocks)]
            for side, fn in (("kernel", ops.finite_gather), ("twin", reference.finite_gather)):
                dsts = [torch.full(blk.shape, -12345.0, dtype=dt, device=device) for blk, dt in zip(blocks, out)]
                dsts += [d.clone() for _, d in extra_copies]
                srcs = blocks + [s for s, _ in extra_copies]
                flag = fn([*checks, *extra_checks], list(zip(srcs, dsts)))
                sides[side] = (flag, dsts, srcs)
            tag = f"finite_gather [{str(dtype)[6:]}, {plant}]"
            (fk, dk, srcs), (fr, dr, _) = sides["kernel"], sides["twin"]
            if fk is None or fk.shape != () or fk.dtype != torch.bool or fk.device.type != device.type:
                errs.append(f"{tag}: the flag is not a 0-d bool on {device}: {fk!r}")
                continue
            if bool(fk) != bool(fr) or bool(fk) != want_ok:
                errs.append(f"{tag}: flag {bool(fk)}, twin {bool(fr)}, planted {'finite' if want_ok else 'non-finite'}")
            for i, (got, ref, src) in enumerate(zip(dk, dr, srcs)):
                errs += [f"{tag} copy {i}: {e}" for e in _bits_differ(got, ref) + _bits_differ(got, src.to(got.dtype))]
    return errs


def _bits_differ(a: Tensor, b: Tensor) -> list[str]:
    """[] when ``a`` and ``b`` hold the same bits (NaNs included), else one description."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return [f"shape/dtype {tuple(a.shape)} {a.dtype} vs {tuple(b.shape)} {b.dtype}"]
    ints = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    bad = a.contiguous().view(ints) != b.contiguous().view(ints)
    return [f"{int(bad.sum())}/{a.numel()} values differ"] if bool(bad.any()) else []


COMPANDING_TINY_BITS = (127 - 100) << 23
"""The bits of 2^-100: below it :func:`division_errors` asks the companding's division for the codes alone (and
:func:`.common.sqrt_fast` takes no operand: ``quant.V_MIN``)."""

DIVISION_SLICE = dict(
    x_values=4096,
    mantissas=8,
    y_bits=(COMPANDING_TINY_BITS - 2048, COMPANDING_TINY_BITS + 2048),
    sqrt_bits=(COMPANDING_TINY_BITS, COMPANDING_TINY_BITS + 4096),
)
""":func:`division_errors`' arguments for a run under the interpreter (the CPU tests, ``bench.kernels --dry-run``):
8 of the 128 divisor mantissas and the first 4096 dividend mantissas in each regime, the 4096 bit patterns
around 2^-100, where the companding's check turns from quotients to codes, and the 4096 from 2^-100 up, the
square root's smallest operands."""


def division_errors(
    device: torch.device,
    x_values: int = 1 << 23,
    mantissas: int = 128,
    y_bits: tuple[int, int] = common.COMPANDING_Y_BITS,
    sqrt_bits: tuple[int, int] = common.SQRT_X_BITS,
) -> list[str]:
    """The codecs' divisions against ``div_rn``, bit for bit: the per-group one (:func:`.common.div_by_groups`)
    over ``x_values`` fp32 mantissas of the dividend and ``mantissas`` bf16 mantissas of the divisor in each of
    :data:`.common.DIVISION_REGIMES` (:func:`.common.division_mismatches`; all of them by default), and the
    companding's (:func:`.common.div_companding`) over the ``|y|`` bit patterns ``y_bits`` (every fp32 in [-1, 1]
    by default): no code may differ, nor any quotient of ``|y| >= 2^-100``; the same division in the decode of every
    int8 code (:func:`.common.decode_signed`): no value may differ. And the branch-free square root
    (:func:`.common.sqrt_fast`) against ``sqrt_rn`` over the bit patterns ``sqrt_bits`` (every fp32 in
    [``quant.V_MIN``, FMAX] by default): no result may differ."""
    counts = common.division_mismatches(device, x_values, mantissas)
    errs = [f"div_by_groups [{regime}]: {n} quotients differ from div_rn" for regime, n in counts.items() if n]
    lo, hi = y_bits
    tiny = min(max(COMPANDING_TINY_BITS, lo), hi)  # |y| < 2^-100: only the codes must agree
    below, above = common.companding_mismatches(device, lo, tiny), common.companding_mismatches(device, tiny, hi)
    wrong = {"codes": below["codes"] + above["codes"], "quotients of |y| >= 2^-100": above["quotients"]}
    errs += [f"div_companding: {n} {what} differ from div_rn's" for what, n in wrong.items() if n]
    n = common.decode_mismatches(device)
    errs += [f"decode_signed: {n} of the 256 codes decode to other bits than div_rn gives"] if n else []
    n = common.sqrt_mismatches(device, *sqrt_bits)
    return errs + ([f"sqrt_fast: {n} roots differ from sqrt_rn's"] if n else [])
