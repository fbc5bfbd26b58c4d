"""Presets: an :class:`~scao_dist.SCAO` configured to fit a memory budget (one 16 GB card, say).

    from scao_dist.presets import for_memory_budget

    model = build_model()                                  # fp32 or bf16; cast to bf16 here
    opt = for_memory_budget(model, budget_gb=16, lr=1e-4)  # an SCAO; the plan is opt.memory_plan
    print(opt.memory_plan.table())

What it chooses, in this order, taking the first setting whose bytes fit (the knobs you pass are
kept fixed; everything else is SCAO's default):

1. SCAO's defaults (gradients kept: accumulation, clipping and several ranks all work);
2. ``grad_release=True``: each parameter is updated from its post-accumulate-grad hook and its
   gradient freed at once, so there is no gradient buffer (2 bytes/param) and the optimizer works
   on one parameter at a time instead of on whole stacks of same-shaped blocks (far smaller
   temporaries). One process, ``optimizer.step()`` after every backward (no accumulation), no
   global-norm clipping. The math is unchanged;
3. ``full_factor_dim`` 512, then 256: sides longer than this keep an O(d k) streamed sketch of
   their Kronecker factor and a rank-capped basis instead of a dense d x d int8 factor with a
   full d x d basis. This decides which form each factor takes;
4. smaller rank caps for the streamed sides (``rank_max`` 64, then 32): narrower bases, rotated
   second moments and sketches. Both 3 and 4 cost some preconditioning quality on the layers
   they touch. Everything stays on the parameters' device: SCAO has no CPU offload.

What is counted on the device, all of it measured from the optimizer itself rather than guessed:

* weights: bf16, 2 bytes/param (``cast_bf16=True`` casts the model; SCAO's int8 correction bits
  make an fp32 master copy unnecessary);
* gradients: 2 bytes/param, or, with ``grad_release``, the two largest gradients alive at once;
* optimizer state at its largest: the SCAO is built on the ``meta`` device (no memory), every
  rotated side is grown to its widest basis (dense sides: all d eigenvectors; streamed sides: the
  adaptive rank's cap), and
  :func:`~scao_dist.memory_report` counts the bytes. Refreshes computed but not swapped in yet
  (``refresh_lag``) hold fp32 copies: ``PENDING_REFRESH_FACTOR`` times twice the bases of the blocks
  that refresh on the busiest step of the plan (whole refresh batches, see ``shard/plan.py``);
* the step's temporaries: ``TRANSIENT_PER_ELEM`` bytes per element of the largest set of blocks
  stepped in one call (a whole stack of same-shaped blocks, or one parameter with
  ``grad_release``) plus ``TRANSIENT_PER_FACTOR_ELEM`` per element of their dense d x d factors.
  Both constants were measured on CPU (tests/test_presets.py checks them against a tracker of
  live tensor bytes) and hold with margin on the plain-torch path;
* ``reserve_gb`` (default: 15% of the budget, at least 1 GiB): activations, logits, the CUDA
  allocator's slack and whatever else your step holds. With gradient checkpointing, a 1.1B
  Llama at batch 1 x 512 needs about 1 GiB of it.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .optim import SCAO
from .shard.plan import basis_elems, refresh_bytes
from .state import memory_report

GIB = 2**30
TRANSIENT_PER_ELEM = 80  # bytes of step temporaries per element stepped in one call (about 20 fp32 copies)
TRANSIENT_PER_FACTOR_ELEM = 64  # bytes per element of the dense d x d factors of those blocks
PENDING_REFRESH_FACTOR = 4  # a refresh computed but not swapped in yet holds fp32 bases (and frame rotations)
ADAMW_FP32_BYTES_PER_PARAM = 16  # fp32 weights, fp32 gradients, two fp32 moments (no activations)

LADDER: tuple[dict[str, Any], ...] = (
    {},
    {"grad_release": True},
    {"grad_release": True, "full_factor_dim": 512},
    {"grad_release": True, "full_factor_dim": 512, "rank_max": 64},
    {"grad_release": True, "full_factor_dim": 256, "rank_max": 32},
)
"""Candidate settings, best first (quality and speed), leanest last."""


def _refresh_work(opt: SCAO) -> int:
    """The largest estimated working set of one refresh batch of the plan
    (``shard/plan.refresh_bytes``): it overlaps the step, so the plan adds it to the temporaries."""
    per_batch: dict[int, int] = {}
    for s in opt.specs:
        if opt.plan.batch[s.index] >= 0:
            cap = opt.param_groups[s.group]["rank_max"] or max(s.shape)
            est = refresh_bytes(s, cap, opt.config.oversample)
            per_batch[opt.plan.batch[s.index]] = per_batch.get(opt.plan.batch[s.index], 0) + est
    return max(per_batch.values(), default=0)


def _refresh_share(opt: SCAO) -> float:
    """Twice the largest share of the basis elements that refresh on one step (one phase of the plan:
    whole refresh batches of same-shaped blocks), for a refresh held while the next is computed."""
    if not opt.config.stagger_refresh:
        return 1.0
    per_phase: dict[int, float] = {}
    for s in opt.specs:
        if s.kind != "kron":
            continue
        elems = basis_elems(s, opt.param_groups[s.group]["rank_max"] or max(s.shape))
        per_phase[opt.plan.phase[s.index]] = per_phase.get(opt.plan.phase[s.index], 0.0) + elems
    total = sum(per_phase.values())
    return min(1.0, 2.0 * max(per_phase.values()) / total) if total else 0.0


class BudgetError(ValueError):
    """No setting fits the budget; the message holds the leanest plan's bytes."""


@dataclass
class MemoryPlan:
    """Bytes one setting needs on the device (see the module docstring for what each counts)."""

    settings: dict[str, Any]
    params: int
    weights: int
    grads: int
    state: int
    transient: int
    budget: int = 0
    reserve: int = 0
    state_by_piece: dict[str, int] = field(default_factory=dict)
    pending: int = 0  # of ``state``: refreshes computed but not yet swapped in
    refresh_work: int = 0  # the largest refresh batch's float64 working set (on the refresh worker)

    @property
    def total(self) -> int:
        """Everything but the reserve."""
        return self.weights + self.grads + self.state + self.transient + self.refresh_work

    @property
    def fits(self) -> bool:
        return self.total + self.reserve <= self.budget

    def table(self) -> str:
        rows = [
            ("weights (bf16)", self.weights),
            ("gradients", self.grads),
            ("optimizer state (widest bases)", self.state),
            ("step temporaries", self.transient),
            ("refresh batch working set", self.refresh_work),
            ("reserve (activations, slack)", self.reserve),
            ("total", self.total + self.reserve),
            ("budget", self.budget),
            ("AdamW fp32 (weights, grads, moments)", ADAMW_FP32_BYTES_PER_PARAM * self.params),
        ]
        lines = [f"SCAO settings: {self.settings or 'defaults'} ({self.params / 1e6:,.1f}M params)"]
        lines += [f"  {name:<38}{nbytes / GIB:>8.2f} GiB" for name, nbytes in rows]
        return "\n".join(lines)


def _default_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay on matrices, none on norm gains and biases (as nanoGPT and Hugging Face do)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay}]
    rest = [p for p in params if p.ndim < 2]
    if rest:
        groups.append({"params": rest, "weight_decay": 0.0})
    return groups


def _as_groups(params: Iterable[Tensor] | Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    items = list(params)
    if items and isinstance(items[0], dict):
        return [dict(g, params=list(g["params"])) for g in items]
    return [{"params": items}]


def _meta_groups(groups: list[dict[str, Any]], dtype: torch.dtype | None) -> list[dict[str, Any]]:
    """The same groups with ``meta`` stand-ins (same shapes; ``dtype`` for floating params if given)."""
    out = []
    for g in groups:
        metas = []
        for p in g["params"]:
            dt = dtype if (dtype is not None and p.is_floating_point()) else p.dtype
            metas.append(torch.empty(p.shape, dtype=dt, device="meta").requires_grad_(p.requires_grad))
        out.append(dict(g, params=metas))
    return out


def _widest_basis(side: Any, rank_max: int | None) -> int:
    """The most basis columns a side can reach: dense sides keep every eigenvector (their d x d
    factor costs a full basis anyway); streamed sides stop at the adaptive rank's cap, allocated in
    steps of 16 columns (``Side.width_for``)."""
    if side.mode == "dense":
        return side.d
    return side.width_for(side.rank_cap(rank_max if rank_max is not None else 1 << 30))


def _call_sizes(opt: SCAO, grad_release: bool) -> list[tuple[int, int]]:
    """(elements, dense factor elements) of every set of blocks one step call works on."""
    calls: list[tuple[int, int]] = []
    for grp in opt.groups:
        sides = getattr(grp, "sides", ())
        dense = sum(s.d * s.d for s in sides if s.mode == "dense")
        if not grad_release:
            calls.append((grp.numel(), dense * grp.B))
            continue
        per_param: dict[int, int] = {}
        for s in grp.specs:
            per_param[s.param] = per_param.get(s.param, 0) + 1
        for pid, n in per_param.items():
            numel = sum(s.numel for s in grp.specs if s.param == pid)
            calls.append((numel, dense * n))
    return calls


def plan_memory(
    params: Iterable[Tensor] | Iterable[dict[str, Any]],
    settings: dict[str, Any] | None = None,
    *,
    dtype: torch.dtype | None = torch.bfloat16,
    budget_gb: float = 0.0,
    reserve_gb: float = 0.0,
) -> MemoryPlan:
    """The bytes an SCAO with ``settings`` needs for these parameters (``dtype``: weights as cast)."""
    settings = dict(settings or {})
    groups = _as_groups(params)
    metas = _meta_groups(groups, dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = SCAO(metas, **{**settings, "async_refresh": False})
    for grp in opt.groups:
        cap_max = opt.param_groups[grp.specs[0].group]["rank_max"]
        for side in getattr(grp, "sides", ()):
            if side.rotated:
                width = _widest_basis(side, cap_max)
                if width > side.K:
                    grp._grow(side, width)
    rep = memory_report(opt)
    pending = int(PENDING_REFRESH_FACTOR * rep.bytes.get("bases", 0) * _refresh_share(opt))
    trained = [p for g in metas for p in g["params"] if p.requires_grad]
    n = sum(p.numel() for p in trained)
    weights = sum(p.numel() * p.element_size() for g in metas for p in g["params"])
    release = bool(settings.get("grad_release", False))
    sizes = sorted((p.numel() * p.element_size() for p in trained), reverse=True)
    grads = sum(sizes[:2]) if release else sum(sizes)
    transient = max(
        (TRANSIENT_PER_ELEM * e + TRANSIENT_PER_FACTOR_ELEM * d for e, d in _call_sizes(opt, release)), default=0
    )
    return MemoryPlan(
        settings=settings,
        params=n,
        weights=weights,
        grads=grads,
        state=rep.total + pending,
        transient=transient,
        budget=int(budget_gb * GIB),
        reserve=int(reserve_gb * GIB),
        state_by_piece=dict(rep.bytes),
        pending=pending,
        refresh_work=_refresh_work(opt),
    )


def choose_settings(
    params: Iterable[Tensor] | Iterable[dict[str, Any]],
    budget_gb: float = 16.0,
    *,
    reserve_gb: float | None = None,
    dtype: torch.dtype | None = torch.bfloat16,
    **fixed: Any,
) -> MemoryPlan:
    """The first :data:`LADDER` setting (with ``fixed`` knobs on top) that fits; :class:`BudgetError` if none."""
    groups = _as_groups(params)
    reserve = reserve_gb if reserve_gb is not None else max(1.0, 0.15 * budget_gb)
    seen: list[dict[str, Any]] = []
    plan = None
    for rung in LADDER:
        settings = {**rung, **fixed}
        if settings in seen:
            continue
        seen.append(settings)
        plan = plan_memory(groups, settings, dtype=dtype, budget_gb=budget_gb, reserve_gb=reserve)
        if plan.fits:
            return plan
    assert plan is not None
    raise BudgetError(
        f"no SCAO setting fits {budget_gb:g} GiB; the leanest tried:\n{plan.table()}\n"
        "Lower reserve_gb if your activations need less, shard over several GPUs, or train fewer parameters."
    )


def for_memory_budget(
    model: nn.Module,
    budget_gb: float = 16.0,
    *,
    lr: float = 1e-3,
    weight_decay: float = 1e-2,
    params: Iterable[Tensor] | Iterable[dict[str, Any]] | None = None,
    reserve_gb: float | None = None,
    cast_bf16: bool = True,
    strict: bool = True,
    **knobs: Any,
) -> SCAO:
    """An :class:`~scao_dist.SCAO` for ``model`` whose device memory fits ``budget_gb`` (GiB).

    Args:
        model: casts its floating-point parameters to bf16 first when ``cast_bf16`` (in place).
        budget_gb: the device memory the training step may use, in GiB.
        lr, weight_decay: as for :class:`~scao_dist.SCAO`.
        params: parameters or param groups (default: decay on >= 2-D weights, none on the rest).
        reserve_gb: memory kept for activations and allocator slack (default 15%, >= 1 GiB).
        strict: raise :class:`BudgetError` when nothing fits (else warn and use the leanest).
        **knobs: SCAO settings to keep fixed (e.g. ``grad_release=False`` for accumulation).

    The chosen plan is ``opt.memory_plan`` (:class:`MemoryPlan`; ``.table()`` prints it).
    """
    if cast_bf16:
        model.to(torch.bfloat16)
    groups = _as_groups(params) if params is not None else _default_groups(model, weight_decay)
    dtype = None  # the parameters are what they are now
    try:
        plan = choose_settings(groups, budget_gb, reserve_gb=reserve_gb, dtype=dtype, **knobs)
    except BudgetError as err:
        if strict:
            raise
        warnings.warn(str(err), RuntimeWarning, stacklevel=2)
        plan = plan_memory(groups, {**LADDER[-1], **knobs}, dtype=dtype, budget_gb=budget_gb,
                           reserve_gb=reserve_gb if reserve_gb is not None else max(1.0, 0.15 * budget_gb))  # fmt: skip
    opt = SCAO(groups, lr=lr, weight_decay=weight_decay, **plan.settings)
    opt.memory_plan = plan  # type: ignore[attr-defined]
    return opt


def adamw_fp32_bytes(model: nn.Module) -> int:
    """What AdamW with fp32 master weights holds for ``model`` (weights, grads, moments; no activations)."""
    return ADAMW_FP32_BYTES_PER_PARAM * sum(p.numel() for p in model.parameters() if p.requires_grad)
