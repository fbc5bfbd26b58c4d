"""``SCAO``: SOAP-style Kronecker-factored preconditioning at the memory of an 8-bit AdamW.

A drop-in for :class:`torch.optim.AdamW`::

    opt = SCAO(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)

What one step does is documented in :mod:`scao_dist.groups` (the math per block),
:mod:`scao_dist.precond` (bases, refresh, adaptive rank) and :mod:`scao_dist.quant` (the int8
codecs). This module holds the orchestration: param groups, the split into blocks, which rank
owns which block (one rank: all of them), the non-finite guard, gradient release, refresh
scheduling, counters and the (compressed, tensors-only) state dict.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from .blocks import BlockSpec, split_param
from .config import GROUP_DEFAULTS, Config, Hyper, validate_group
from .groups import AdamGroup, KronGroup, make_group
from .shard.comm import Comm
from .shard.plan import Plan, make_plan, plan_fingerprint
from .shard.refresh import RefreshScheduler

_SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float64)


class SCAO(torch.optim.Optimizer):
    """Adam in the eigenbasis of Kronecker factors (SOAP), compressed and sharded.

    Args (AdamW's first):
        params: parameters or param-group dicts, as for any torch optimizer.
        lr, betas, eps, weight_decay: as :class:`torch.optim.AdamW` (decoupled decay).
        shampoo_beta: EMA factor of the Kronecker factors ``L``/``R``.
        precond_freq: refresh the eigenbases every this many steps (per block; staggered).
        spectral_mass: adaptive rank — keep the fewest eigenvectors holding this share of the
            factor's trace. 0.99 by default: 0.95 loses most of SOAP's edge (DESIGN.md section 5).
        rank_min, rank_max: clamp for the adaptive rank (``rank_max=None``: no cap).
        rank: ``"adaptive"`` (default) or ``"full"`` — full rank, dense factors on every
            rotated side (with ``quantize=False`` this is plain fp32 SOAP).
        quantize: int8/uint8 moments and factors, bf16 bases (``False``: fp32 everything).
        max_precond_dim: sides longer than this are split into blocks.
        min_precond_dim: sides shorter than this are not rotated.
        full_factor_dim: sides longer than this keep a streamed O(d k) sketch, not d x d.
        oversample: probe directions tracked beyond the basis (how a truncated basis grows).
        correction_bits: 8 or 16 error-correction bits per bf16 weight (16 for very small lrs).
        grad_release: update each parameter from its post-accumulate-grad hook and free its
            gradient right away (single process; no gradient accumulation; see README).
        stagger_refresh: spread the blocks' refreshes over the ``precond_freq`` steps.
        graft: per-block step size — ``"adafactor"`` (default: the norm of a factored-Adam update
            on the same momentum, so AdamW's lr transfers), ``"rms"`` (fixed RMS ``graft_rms``,
            as Muon's ``match_rms_adamw``) or ``"none"`` (plain SOAP).
        refresh_lag: 0 refreshes synchronously (exactly SOAP); ``n >= 1`` computes refreshes
            off the critical path and swaps them in ``n`` steps later.
        process_group: shard blocks over this group (default: the default group when
            ``torch.distributed`` is initialised with more than one rank, else no sharding).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        *,
        shampoo_beta: float = GROUP_DEFAULTS["shampoo_beta"],
        precond_freq: int = GROUP_DEFAULTS["precond_freq"],
        spectral_mass: float = GROUP_DEFAULTS["spectral_mass"],
        rank_min: int = GROUP_DEFAULTS["rank_min"],
        rank_max: int | None = GROUP_DEFAULTS["rank_max"],
        rank: str = "adaptive",
        quantize: bool = True,
        max_precond_dim: int = 4096,
        min_precond_dim: int = 8,
        full_factor_dim: int = 1024,
        oversample: int = 16,
        correction_bits: int = 8,
        grad_release: bool = False,
        stagger_refresh: bool = True,
        refresh_lag: int = 0,
        graft: str = "adafactor",
        graft_rms: float = 0.2,
        process_group: Any = None,
    ) -> None:
        if rank not in ("adaptive", "full"):
            raise ValueError(f"rank must be 'adaptive' or 'full', got {rank!r}")
        if rank == "full":
            spectral_mass, rank_max, full_factor_dim = 1.0, None, math.inf
        if graft not in ("adafactor", "rms", "none"):
            raise ValueError(f"graft must be 'adafactor', 'rms' or 'none', got {graft!r}")
        if refresh_lag < 0:
            raise ValueError(f"refresh_lag must be >= 0, got {refresh_lag}")
        if max_precond_dim < 1 or min_precond_dim < 1 or oversample < 1:
            raise ValueError("max_precond_dim, min_precond_dim and oversample must be >= 1")
        self.config = Config(
            quantize=bool(quantize),
            max_precond_dim=int(max_precond_dim),
            min_precond_dim=int(min_precond_dim),
            full_factor_dim=float(full_factor_dim),
            oversample=int(oversample),
            correction_bits=int(correction_bits),
            grad_release=bool(grad_release),
            stagger_refresh=bool(stagger_refresh),
            refresh_lag=int(refresh_lag),
            graft=graft,
            graft_rms=float(graft_rms),
        )
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            shampoo_beta=shampoo_beta,
            precond_freq=precond_freq,
            spectral_mass=spectral_mass,
            rank_min=rank_min,
            rank_max=rank_max,
        )
        self._built = False
        super().__init__(params, defaults)
        self.comm = Comm(process_group)
        if self.config.grad_release and self.comm.world_size > 1:
            raise ValueError(
                "grad_release=True runs each update from the parameter's backward hook, before any "
                "gradient communication; with several ranks use grad_release=False (SCAO already "
                "shards its state and frees the reduced gradients)."
            )
        self.counters: dict[str, int] = defaultdict(int)
        self._warned_nonfinite = False
        self._released: set[int] = set()
        self._build()

    # ------------------------------------------------------------------------ structure
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        validate_group(self.param_groups[-1])
        for p in self.param_groups[-1]["params"]:
            if p.requires_grad and p.dtype not in _SUPPORTED_DTYPES:
                raise TypeError(
                    f"SCAO supports float32, float64 and bfloat16 parameters, got {p.dtype} for a "
                    f"parameter of shape {tuple(p.shape)}; cast the model with model.to(torch.bfloat16) "
                    "(bf16 weights get int8 error-correction bits, so no fp32 master copy is needed)."
                )
            if p.requires_grad and p.is_sparse:
                raise TypeError("SCAO does not support sparse parameters")
        if self._built:
            self._build()

    def _all_params(self) -> list[Tensor]:
        """Every parameter in param-group order: the ids torch's state_dict uses."""
        return [p for g in self.param_groups for p in g["params"]]

    def _build(self) -> None:
        """Split params into blocks, plan owners, and create the stacked groups (keeps old state)."""
        cfg = self.config
        params = self._all_params()
        old = self._export_blocks() if self._built else {}
        specs: list[BlockSpec] = []
        param_group: dict[int, int] = {}
        for gi, g in enumerate(self.param_groups):
            for p in g["params"]:
                pid = len(param_group)
                param_group[pid] = gi
                if not p.requires_grad:
                    continue
                specs += split_param(
                    p,
                    param=pid,
                    group=gi,
                    first_index=len(specs),
                    max_precond_dim=cfg.max_precond_dim,
                    min_precond_dim=cfg.min_precond_dim,
                    full_factor_dim=cfg.full_factor_dim,
                )
        hps = [Hyper.from_group(self.param_groups[s.group]) for s in specs]
        self.specs = specs
        self.plan: Plan = make_plan(
            specs,
            self.comm.world_size,
            rank_max=[h.rank_max for h in hps],
            precond_freq=[h.precond_freq for h in hps],
            quantize=cfg.quantize,
            stagger=cfg.stagger_refresh,
        )
        self.comm.check_same_plan(plan_fingerprint(specs))
        by_key: dict[tuple, list[BlockSpec]] = defaultdict(list)
        for b in self.plan.owned(self.comm.rank):
            s = specs[b]
            by_key[(s.key, params[s.param].device)].append(s)
        self.groups: list[KronGroup | AdamGroup] = []
        self._where: dict[int, tuple[KronGroup | AdamGroup, int]] = {}
        for (_, device), members in by_key.items():
            grp = make_group(members, params, cfg, device)
            if isinstance(grp, KronGroup):
                grp.phase = [self.plan.phase[s.index] for s in members]
            for i, s in enumerate(members):
                self._where[s.index] = (grp, i)
            self.groups.append(grp)
        self._blocks_of_param: dict[int, list[int]] = defaultdict(list)
        for s in specs:
            self._blocks_of_param[s.param].append(s.index)
        self.refresher = RefreshScheduler(self, cfg.refresh_lag)
        for key, st in old.items():
            if key in self._where:
                grp, i = self._where[key]
                grp.load_block_state(i, st)
        if cfg.grad_release:
            self._install_release_hooks(params)
        self._built = True

    # ----------------------------------------------------------------------------- step
    def _hyper(self, grp: KronGroup | AdamGroup) -> Hyper:
        return Hyper.from_group(self.param_groups[grp.specs[0].group])

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One optimizer step (see the class docstring); skipped whole on non-finite grads."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.config.grad_release:
            self._released.clear()
            self.refresher.step_boundary()
            return loss
        params = self._all_params()
        self.refresher.step_boundary()
        with_grad = {s.param for s in self.specs if params[s.param].grad is not None}
        for pid in with_grad:
            if params[pid].grad.is_sparse:
                raise TypeError("SCAO does not support sparse gradients")
        if not self.comm.all_finite([params[pid].grad for pid in sorted(with_grad)]):
            self._skip_nonfinite()
            return loss
        self.comm.reduce_grads(self, with_grad)
        for grp in self.groups:
            idx = [i for i, s in enumerate(grp.specs) if s.param in with_grad]
            if idx:
                self._run_group(grp, idx)
        self.comm.gather_params(self, with_grad)
        self.counters["steps"] += 1
        return loss

    def _run_group(self, grp: KronGroup | AdamGroup, idx: list[int]) -> None:
        hp = self._hyper(grp)
        failures = getattr(grp, "failures", 0)
        due = grp.step(idx, hp)
        self.counters["basis_failures"] += getattr(grp, "failures", 0) - failures
        for i in due:
            self.refresher.submit(grp, i, hp)

    def _skip_nonfinite(self) -> None:
        self.counters["skipped_steps"] += 1
        if not self._warned_nonfinite:
            self._warned_nonfinite = True
            warnings.warn(
                "SCAO: non-finite gradient (NaN or inf); skipping this step for all parameters with "
                "the optimizer state untouched. Later skips are counted in optimizer.counters"
                "['skipped_steps'] without a warning.",
                RuntimeWarning,
                stacklevel=3,
            )

    # -------------------------------------------------------------------- grad release
    def _install_release_hooks(self, params: list[Tensor]) -> None:
        if getattr(self, "_hooks", None):
            for h in self._hooks:
                h.remove()
        self._hooks = []
        for pid, p in enumerate(params):
            if p.requires_grad:
                self._hooks.append(p.register_post_accumulate_grad_hook(self._make_hook(pid)))

    def _make_hook(self, pid: int) -> Callable[[Tensor], None]:
        def hook(p: Tensor) -> None:
            self._release_one(pid, p)

        return hook

    @torch.no_grad()
    def _release_one(self, pid: int, p: Tensor) -> None:
        if pid in self._released:
            raise RuntimeError(
                "SCAO(grad_release=True) updated this parameter already in this step: gradient "
                "accumulation over several backward passes is not possible when gradients are freed "
                "as they arrive. Call optimizer.step() after every backward, or use grad_release=False."
            )
        self._released.add(pid)
        if not bool(torch.isfinite(p.grad).all()):
            self._skip_nonfinite()  # only this parameter is skipped: the others were updated already
            p.grad = None
            return
        per_group: dict[int, tuple[KronGroup | AdamGroup, list[int]]] = {}
        for b in self._blocks_of_param[pid]:
            grp, i = self._where[b]
            per_group.setdefault(id(grp), (grp, []))[1].append(i)
        for grp, idx in per_group.values():
            self._run_group(grp, idx)
        p.grad = None

    # -------------------------------------------------------------------------- state
    def _export_blocks(self) -> dict[int, dict[str, Tensor]]:
        self.refresher.drain()
        return {s.index: grp.block_state(i) for grp in self.groups for i, s in enumerate(grp.specs)}

    def state_dict(self) -> dict[str, Any]:
        """Tensors-only state (int8 stays int8): ``state[param_id]['b<k>']`` per block ``k``."""
        sd = super().state_dict()
        state: dict[int, dict[str, Any]] = {}
        first = {}
        for s in self.specs:
            first.setdefault(s.param, s.index)
        for b, st in self._export_blocks().items():
            s = self.specs[b]
            state.setdefault(s.param, {})[f"b{b - first[s.param]}"] = st
        sd["state"] = state
        sd["scao"] = {"config": self.config.as_dict(), "counters": dict(self.counters), "version": 1}
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved_cfg = state_dict.get("scao", {}).get("config")
        if saved_cfg is not None:
            mine = self.config.as_dict()
            diff = {
                k: (saved_cfg.get(k), v)
                for k, v in mine.items()
                if k not in ("refresh_lag", "grad_release") and saved_cfg.get(k) != v
            }
            if diff:
                raise ValueError(
                    f"checkpoint was written by an SCAO with different structure settings {diff} "
                    "(saved, current); construct the optimizer with the saved settings to resume."
                )
        super().load_state_dict({"state": {}, "param_groups": state_dict["param_groups"]})
        self.state.clear()
        first = {}
        for s in self.specs:
            first.setdefault(s.param, s.index)
        for grp in self.groups:
            for i, s in enumerate(grp.specs):
                entry = state_dict["state"].get(s.param, {}).get(f"b{s.index - first[s.param]}")
                if entry is not None:
                    grp.load_block_state(i, entry)
        self.counters = defaultdict(int, state_dict.get("scao", {}).get("counters", {}))
