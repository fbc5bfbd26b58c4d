"""``SCAO``: SOAP-style Kronecker-factored preconditioning at the memory of an 8-bit AdamW.

A drop-in for :class:`torch.optim.AdamW`::

    opt = SCAO(model.parameters(), lr=1e-3, weight_decay=1e-2)   # AdamW's arguments, same meaning

What one step does is documented in :mod:`scao_dist.groups` (the math per block),
:mod:`scao_dist.precond` (bases, refresh, adaptive rank) and :mod:`scao_dist.quant` (the int8
codecs). This module holds the orchestration: param groups, the split into blocks, which rank
owns which block (one rank: all of them), the non-finite guard, gradient release, refresh
scheduling, counters and the (compressed, tensors-only) state dict.
"""

from __future__ import annotations

import contextlib
import math
import warnings
import weakref
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor

from .blocks import BlockSpec, split_param
from .capture import GroupGraphs, Work, grad_of, same_objects
from .config import GROUP_DEFAULTS, Config, Hyper, quantize_pieces, validate_group
from .groups import AdamGroup, KronGroup, make_group
from .shard.comm import Comm, FiniteCheck, build_buckets
from .shard.plan import Plan, make_plan, plan_fingerprint
from .shard.refresh import RefreshScheduler
from .step_hooks import hooked_step


def _no_ref() -> None:
    """The weak reference of a missing gradient (always ``None``)."""


_SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float64)


class SCAO(torch.optim.Optimizer):
    """Adam in the eigenbasis of Kronecker factors (SOAP), compressed and sharded.

    Args (AdamW's first):
        params: parameters or param-group dicts, as for any torch optimizer.
        lr, betas, eps, weight_decay: as :class:`torch.optim.AdamW` (decoupled decay). The
            default ``beta2`` is 0.95, not AdamW's 0.999: the rotated second moment must follow
            a basis that turns every ``precond_freq`` steps (43M GPT, 1500 steps: 0.829 held-out
            with 0.95 vs 0.874 with 0.999; BENCHMARKS.md).
        shampoo_beta: EMA factor of the Kronecker factors ``L``/``R``.
        precond_freq: refresh the eigenbases every this many steps (per block; staggered). 5 by
            default (SOAP uses 10): on the 43M GPT, 1500 steps, 0.813/0.823 held-out (two seeds)
            against 0.822 at 10, for 42.3 vs 41.3 ms/step, since refreshes run in batches
            (BENCHMARKS.md); 3 gave 0.812/0.821 at 58 ms/step. On large models raise it: on the
            405M GPT (one H200) 5 makes the step wait for the refresh worker, 56-67 ms/step against
            46-54 at 10 over three GPU calls.
        spectral_mass: adaptive rank — keep the fewest eigenvectors holding this share of the
            factor's trace. 0.99 by default: 0.95 loses most of SOAP's edge (DESIGN.md section 5).
        rank_min, rank_max: clamp for the adaptive rank (``rank_max=None``: no cap).
        rank: ``"adaptive"`` (default) or ``"full"`` — full rank, dense factors on every
            rotated side (with ``quantize=False`` this is plain fp32 SOAP).
        quantize: int8/uint8 moments and factors, bf16 bases (``False``: fp32 everything), or the
            subset of ``("m", "v", "factors", "bases")`` to store compressed.
        max_precond_dim: sides longer than this are split into blocks.
        min_precond_dim: sides shorter than this are not rotated.
        full_factor_dim: sides longer than this keep a streamed O(d k) sketch, not d x d.
        oversample: probe directions tracked beyond the basis (how a truncated basis grows).
        correction_bits: 8 or 16 error-correction bits per bf16 weight (16 for very small lrs).
        grad_release: update each parameter from its post-accumulate-grad hook and free its
            gradient right away (single process; no gradient accumulation; see README).
        stagger_refresh: spread the blocks' refreshes over the ``precond_freq`` steps.
        graft: per-block step size — ``"none"`` (default: SOAP's own Adam-in-eigenbasis step,
            best on stochastic LM gradients), ``"norm"`` (the norm of Adam with one second moment
            per block: lr transfers from AdamW on full-batch / low-noise problems too), ``"rms"``
            (fixed RMS ``graft_rms``, as Muon's ``match_rms_adamw``).
        refresh_lag: when a refresh computed at the end of step ``t`` is swapped in: 0 inside
            step ``t`` (synchronous); 1 (default) at the start of step ``t + 1`` — the same math
            as 0, computed on a worker thread / side stream while the next forward/backward runs;
            ``k`` lets ``k - 1`` steps use the old basis.
        refresh_wait: ``True`` (default): a refresh not finished at its swap step is waited for,
            so the math never depends on timing (bit-exact resumes, any rank count). ``False``:
            never wait — a late refresh is swapped in at the first step after it is ready, and a
            block whose refresh is still in flight is not submitted again, so the refresh
            interval stretches to what the worker can do instead of stalling the step (for when
            the worker cannot keep up, e.g. large models at a short ``precond_freq``). Results
            then depend on timing.
        async_refresh: compute lagged refreshes on a worker (``False``: same results, computed
            in line; for debugging and tests).
        process_group: shard blocks over this group (default: the default group when
            ``torch.distributed`` is initialised with more than one rank, else no sharding).
        grad_sync: with several ranks, ``"scao"`` (default) averages the gradients itself by a
            bucketed reduce-scatter to each block's owner (use a plain model, no DDP wrapper);
            ``"external"`` means DDP or DeepSpeed already averaged them (no gradient traffic).
        amsgrad, maximize, foreach, fused, capturable, differentiable: AdamW's flags, accepted so
            code written for AdamW runs: ``foreach``/``fused`` are ignored (SCAO always batches and
            fuses), the others raise if set since SCAO does not implement them.
        stacked_weights: let each group hold its parameters' data in one stacked buffer (the
            ``Parameter`` objects stay; their ``.data`` become views), so a step updates weights in
            place instead of stacking and scattering copies. Only for parameters that own their
            whole storage; falls back to copying if their data is later replaced.
        bucket_mb: size of one communication bucket.
        grad_comm_dtype: dtype the gradients are reduced in (e.g. ``torch.bfloat16`` to halve the
            traffic of an fp32 model); default: each parameter's own dtype. Weights always travel
            exactly, in their own dtype.
        check_sync_every: with several ranks, compare a weight checksum across ranks every this
            many steps and raise on a mismatch (0: never).
        max_consecutive_skips: raise after this many steps in a row were skipped for non-finite
            gradients, naming the ranks that produced them (None: never).
        max_step_numel: blocks of one shape are stepped together in chunks of at most this many
            parameters; the step's fp32 temporaries (a few times the chunk) bound its peak memory.
        overlap_comm: with several ranks and ``grad_sync="scao"``, launch each gradient bucket's
            reduce-scatter from the backward hooks as soon as its last gradient is ready, so the
            traffic overlaps the rest of the backward. Accumulating over micro-batches then needs
            ``with opt.no_sync():`` around all but the last backward (as with DDP).
        cuda_graph: record each group's step on a CUDA device once as a CUDA graph and replay it
            (:mod:`scao_dist.capture`): the same results, bit for bit, with one launch per group
            instead of some forty. lr, bias corrections, seeds and gradients reach the graph
            through fixed device buffers; a refresh that widens a basis triggers a new capture.
            ``zero_grad`` makes the gradients views of those buffers (autograd accumulates into
            them; a parameter without a gradient in a backward then steps with zeros, as after
            ``zero_grad(set_to_none=False)``). Costs the graphs' memory pool: one group step's
            temporaries, held (``max_step_numel`` bounds them). Groups that cannot be captured
            (grafting, fp32 moments, blocks at different steps) step eagerly. The replays are gated
            on the non-finite check on the device (every state write reads its flag) and, on one
            rank, the host reads the check only at the next step: a skipped step is then counted
            (``counters``, ``max_consecutive_skips``) one step late; the states are untouched either way.
        graph_streams: with ``cuda_graph``, the groups' replays are spread over this many CUDA streams
            (largest groups first, balanced by size), so the kernels of two groups can share the GPU
            at once: the low-rank kernels leave registers and warp slots of each multiprocessor
            free, which the other group's kernels fill (405M GPT on an H200: ``step()`` 8.07 ->
            7.38 ms, BENCHMARKS.md §0n). Each stream's graphs get a memory pool and a recording
            stream of their own (one more group step's temporaries per stream: +13 to +103 MB at that
            step's peak, and torch keeps a 32 MB cuBLAS workspace for each new stream).
            1 replays them one after the other.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        *,
        shampoo_beta: float = GROUP_DEFAULTS["shampoo_beta"],
        precond_freq: int = GROUP_DEFAULTS["precond_freq"],
        spectral_mass: float = GROUP_DEFAULTS["spectral_mass"],
        rank_min: int = GROUP_DEFAULTS["rank_min"],
        rank_max: int | None = GROUP_DEFAULTS["rank_max"],
        rank: str = "adaptive",
        quantize: bool | tuple[str, ...] = True,
        max_precond_dim: int = 4096,
        min_precond_dim: int = 8,
        full_factor_dim: int = 1024,
        oversample: int = 16,
        correction_bits: int = 8,
        grad_release: bool = False,
        stagger_refresh: bool = True,
        refresh_lag: int = 1,
        refresh_wait: bool = True,
        async_refresh: bool = True,
        graft: str = "none",
        graft_rms: float = 0.2,
        process_group: Any = None,
        grad_sync: str = "scao",
        bucket_mb: float = 64.0,
        check_sync_every: int = 200,
        max_step_numel: int = 1 << 26,
        overlap_comm: bool = False,
        grad_comm_dtype: torch.dtype | None = None,
        stacked_weights: bool = True,
        cuda_graph: bool = False,
        graph_streams: int = 2,
        amsgrad: bool = False,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        max_consecutive_skips: int | None = 50,
    ) -> None:
        refused = {"amsgrad": amsgrad, "maximize": maximize, "capturable": capturable, "differentiable": differentiable}
        for name, on in refused.items():
            if on:
                raise ValueError(
                    f"SCAO does not implement AdamW's {name}=True; drop the argument "
                    + ("(negate the loss to maximise)." if name == "maximize" else "(its update rule differs).")
                )
        del foreach, fused  # accepted for drop-in compatibility: SCAO always batches blocks and fuses steps
        if rank not in ("adaptive", "full"):
            raise ValueError(f"rank must be 'adaptive' or 'full', got {rank!r}")
        if rank == "full":
            spectral_mass, rank_max, full_factor_dim = 1.0, None, math.inf
        if graft not in ("norm", "rms", "none"):
            raise ValueError(f"graft must be 'norm', 'rms' or 'none', got {graft!r}")
        if refresh_lag < 0:
            raise ValueError(f"refresh_lag must be >= 0, got {refresh_lag}")
        if max_precond_dim < 1 or min_precond_dim < 1 or oversample < 1:
            raise ValueError("max_precond_dim, min_precond_dim and oversample must be >= 1")
        self.config = Config(
            quantize=quantize_pieces(quantize),
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
        self._async_refresh = bool(async_refresh)
        self._refresh_wait = bool(refresh_wait)
        self._bucket_numel = max(1, int(bucket_mb * 2**20 / 4))
        self._check_sync_every = int(check_sync_every)
        self._max_step_numel = int(max_step_numel)
        self._overlap = bool(overlap_comm)
        self._stacked_weights = bool(stacked_weights)
        self._cuda_graph = bool(cuda_graph)
        if int(graph_streams) < 1:
            raise ValueError(f"graph_streams must be at least 1, got {graph_streams}")
        self._graph_streams = int(graph_streams)
        self._no_sync = False
        self._overlap_hooks: list[Any] = []
        self._max_skips = max_consecutive_skips
        self._consecutive_skips = 0
        self._due: dict[int, tuple[Any, Hyper, list[int]]] = {}  # group -> refreshes due this step
        self._t = 0  # optimizer steps taken (skipped ones excluded)
        super().__init__(params, defaults)
        self.comm = Comm(process_group, grad_sync=grad_sync, grad_comm_dtype=grad_comm_dtype)
        if self.config.grad_release and self.comm.world_size > 1:
            raise ValueError(
                "grad_release=True runs each update from the parameter's backward hook, before any "
                "gradient communication; with several ranks use grad_release=False (SCAO already "
                "shards its state and frees the reduced gradients)."
            )
        self.counters: dict[str, int] = defaultdict(int)
        self._warned_nonfinite = False
        self._unsettled: tuple[FiniteCheck, list[Work]] | None = None  # a step whose check the host has not read
        self._released: set[int] = set()
        self._build()

    @classmethod
    def from_model(cls, model: torch.nn.Module, *args: Any, **kwargs: Any) -> SCAO:
        """``SCAO(model.parameters(), ...)`` with ``grad_sync`` chosen from the model: a model wrapped
        in ``DistributedDataParallel`` already averages its gradients (``"external"``); a plain one
        leaves that to SCAO (``"scao"``). (Averaging twice would still be correct, the average of
        equal values being themselves, but would send the gradients twice.)"""
        ddp = isinstance(model, torch.nn.parallel.DistributedDataParallel)
        kwargs.setdefault("grad_sync", "external" if ddp else "scao")
        return cls(model.parameters(), *args, **kwargs)

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
        self._blocks_of_param: dict[int, list[int]] = defaultdict(list)
        specs: list[BlockSpec] = []
        param_group: dict[int, int] = {}
        for gi, g in enumerate(self.param_groups):
            for p in g["params"]:
                pid = len(param_group)
                param_group[pid] = gi
                if not p.requires_grad or p.numel() == 0:
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
        self._spec_params = sorted({s.param for s in specs})
        self._whole: dict[int, tuple[frozenset[int], list[int], list[list[int]]]] = {}  # _with_grads' cache
        self._grads_seen: tuple[list[Callable[[], Tensor | None]], set[int]] = ([], set())  # _with_grad's last
        self.plan: Plan = make_plan(
            specs,
            self.comm.world_size,
            rank_max=[h.rank_max for h in hps],
            precond_freq=[h.precond_freq for h in hps],
            quantize=bool(cfg.quantize),
            stagger=cfg.stagger_refresh,
        )
        self.comm.check_same_plan(plan_fingerprint(specs))
        self.comm.buckets = build_buckets(specs, self.plan.owner, params, self.comm.world_size, self._bucket_numel)
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
                grp.batch = [self.plan.batch[s.index] for s in members]
            for i, s in enumerate(members):
                self._where[s.index] = (grp, i)
            if self._stacked_weights:
                grp.adopt_params()
            self.groups.append(grp)
        for s in specs:
            self._blocks_of_param[s.param].append(s.index)
        if getattr(self, "refresher", None) is not None:
            self.refresher.close()
        self.refresher = RefreshScheduler(self, cfg.refresh_lag, self._async_refresh, wait=self._refresh_wait)
        self._due.clear()
        self._import_blocks(old)
        if cfg.grad_release:
            self._install_release_hooks(params)
        self._install_overlap_hooks(params)
        self._graphs: dict[torch.device, GroupGraphs] = {}
        if self._cuda_graph and not cfg.grad_release:
            by_device: dict[torch.device, list[KronGroup | AdamGroup]] = defaultdict(list)
            for grp in self.groups:
                if grp.device.type == "cuda":
                    by_device[grp.device].append(grp)
            self._graphs = {
                dev: GroupGraphs(members, dev, streams=self._graph_streams) for dev, members in by_device.items()
            }
        if self._cuda_graph and not self._graphs:
            why = (
                "grad_release=True steps each parameter from its backward hook"
                if cfg.grad_release
                else "no parameter is on a CUDA device"
            )
            warnings.warn(
                f"SCAO(cuda_graph=True) has no effect here: {why}; steps run eagerly.", RuntimeWarning, stacklevel=3
            )
        self._built = True

    # ----------------------------------------------------------------------------- step
    def _hyper(self, grp: KronGroup | AdamGroup) -> Hyper:
        return Hyper.from_group(self.param_groups[grp.specs[0].group])

    @hooked_step
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One optimizer step (see the class docstring); skipped whole on non-finite grads. Runs without
        autograd, as under ``torch.no_grad()`` (switched directly: the context manager's host cost is
        ~5x), and with torch's step hooks (:func:`.step_hooks.hooked_step`)."""
        return self._step_no_grad(closure)

    def _step_no_grad(self, closure: Callable[[], float] | None) -> float | None:
        """:meth:`step` without its hooks (a subclass's own hooked ``step`` calls this, so hooks run once)."""
        grad_mode = torch.is_grad_enabled()
        torch._C._set_grad_enabled(False)
        try:
            return self._step(closure)
        finally:
            torch._C._set_grad_enabled(grad_mode)

    def _step(self, closure: Callable[[], float] | None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.config.grad_release:
            self._submit_due()  # the blocks the hooks stepped: one batch per group and phase
            self._released.clear()
            self._t += 1
            self.refresher.step_boundary(self._t + 1)
            return loss
        # the NaN/inf check first (the GPU runs it while the host does the rest); it reads only gradients
        params = self._all_params()
        with_grad, same = self._with_grad(params)
        one = next(iter(self._graphs.values())) if len(self._graphs) == 1 else None
        gather = one is not None and not self.comm.sharded
        checks, copies = self._grads_to_check(params, with_grad, gather, same)
        flag_of = (lambda grads: one.finite_flag(grads, copies)) if one is not None else None
        check = self.comm.check_finite(checks, flag_of)  # (reads the last step's check first: _settle)
        self._settle()
        self.refresher.step_boundary(self._t + 1)
        captured: dict[torch.device, list[Work]] = {}
        eager: list[tuple[KronGroup | AdamGroup, list[int]]] = []
        hypers: dict[int, Hyper] = {}  # (per param group: read once a step)
        for grp in self.groups:
            idx, runs = self._with_grads(grp, with_grad)
            if not idx:
                continue
            graphs = self._graphs.get(grp.device)
            if graphs is not None and graphs.eligible(grp, idx):
                hp = hypers.get(grp.specs[0].group)
                if hp is None:
                    hp = hypers[grp.specs[0].group] = self._hyper(grp)
                captured.setdefault(grp.device, []).append((grp, idx, hp, runs))
            else:
                eager.append((grp, idx))
        for dev, work in captured.items():  # (queued behind the check; the host does not wait)
            self._graphs[dev].upload_scalars(work)
            self._graphs[dev].arm(check.finite)
        # one rank: the replays are gated on the check's device flag, so the host launches them without
        # waiting for it; the host reads the flag only before work that is not gated (an eager group, a
        # refresh) or at the next step (_settle). Sharded: the ranks agree on the check first.
        if (self.comm.sharded or not captured) and not check.ok():
            return self._skip_step(check, [], loss)
        self.comm.reduce_grads(self, with_grad)
        self._reset_overlap()
        launched: list[Work] = []
        for dev, work in captured.items():  # the replays first: the GPU runs them while the host launches the rest
            self._graphs[dev].counters = self.counters  # (load_state_dict replaces the dict)
            launched += work
            due = self._graphs[dev].launch(work, check)
            if due is None:
                return self._skip_step(check, launched, loss)
            for grp, _, hp, _ in work:
                self._note_due(grp, hp, due[id(grp)])
        if (eager or self._due) and not check.ok():
            return self._skip_step(check, launched, loss)
        for grp, idx in eager:
            self._run_group(grp, idx)
        self._submit_due()
        self.comm.gather_params(self)
        self.comm.end_step()
        self._t += 1
        self.counters["steps"] += 1
        if check.resolved:
            self._consecutive_skips = 0
        else:
            self._unsettled = (check, launched)
        if self._check_sync_every and self._t % self._check_sync_every == 0:
            self.comm.check_in_sync([params[s.param] for s in self.specs])
        return loss

    def _skip_step(self, check: FiniteCheck, launched: list[Work], loss: float | None) -> float | None:
        """The gradients of this step were not all finite: undo the step counts the captured groups
        advanced (their replays, gated on the check, changed nothing) and skip it."""
        _undo_steps(launched)
        self._due.clear()
        self.comm.discard_in_flight()
        self._reset_overlap()
        self._skip_nonfinite(check.bad_ranks())
        return loss

    def _settle(self) -> None:
        """Read the last step's non-finite check if the host has not yet (a step of captured groups
        on one rank does not wait for it): if the step turns out skipped on the device, take it back
        on the host too (step counts, counters). Runs before anything that reads the state."""
        if self._unsettled is None:
            return
        check, launched = self._unsettled
        self._unsettled = None
        if check.ok():
            self._consecutive_skips = 0
            return
        _undo_steps(launched)
        self._t -= 1
        self.counters["steps"] -= 1
        self._skip_nonfinite(check.bad_ranks())

    def _with_grad(self, params: list[Tensor]) -> tuple[set[int], bool]:
        """The indices of the (blocked) parameters that have a gradient (a sparse one is refused), and
        whether every ``.grad`` is the very tensor (or ``None``) of the last call: then what the step
        works out from them for its check is the same too (:meth:`_grads_to_check`). In a training loop
        they are (``zero_grad`` installs the same views, autograd accumulates into them)."""
        grads = list(map(grad_of, map(params.__getitem__, self._spec_params)))
        refs, with_grad = self._grads_seen  # (weak: a gradient the caller drops is not kept alive here)
        if same_objects([r() for r in refs], grads):
            return with_grad, True
        if any(g.is_sparse for g in grads if g is not None):
            raise TypeError("SCAO does not support sparse gradients")
        with_grad = {pid for pid, g in zip(self._spec_params, grads) if g is not None}
        self._grads_seen = ([_no_ref if g is None else weakref.ref(g) for g in grads], with_grad)
        return with_grad, False

    def _grads_to_check(
        self, params: list[Tensor], with_grad: set[int], gather: bool = False, same: bool = False
    ) -> tuple[list[Tensor], list[tuple[Tensor, Tensor]]]:
        """Every gradient of this step, for the non-finite check: a captured group's gradient buffer in
        place of its parameters' ``.grad`` when those are views into it (a few large tensors instead of
        hundreds), and with ``gather`` the blocks of the other captured groups as ``(block, buffer rows)``
        pairs the check copies on its way (:meth:`GroupGraphs.check_operands`); the other gradients as
        they are. When these are the same tensors every step the check is replayed
        (:meth:`GroupGraphs.finite_flag`). ``same``: the gradients are the tensors of the last call
        (:meth:`_with_grad`), so the captured groups' operands are those of the last call."""
        out: list[Tensor] = []
        copies: list[tuple[Tensor, Tensor]] = []
        covered: set[int] = set()
        for graphs in self._graphs.values():
            checks, pairs, pids = graphs.check_operands(gather, same)
            out += checks
            copies += pairs
            covered |= pids
        return out + [params[pid].grad for pid in sorted(with_grad - covered)], copies

    def _with_grads(self, grp: KronGroup | AdamGroup, with_grad: set[int]) -> tuple[list[int], list[list[int]]]:
        """The group's blocks whose parameters have gradients, and their chunks (:meth:`_runs`); a group
        whose parameters all have them (every step of a plain loop) gets both from a cache."""
        whole = self._whole.get(id(grp))
        if whole is None:
            params = frozenset(s.param for s in grp.specs)
            idx = list(range(len(grp.specs)))
            whole = self._whole[id(grp)] = (params, idx, self._runs(grp, idx))
        params, idx, runs = whole
        if params <= with_grad:
            return idx, runs
        idx = [i for i, s in enumerate(grp.specs) if s.param in with_grad]
        return idx, self._runs(grp, idx)

    def _run_group(self, grp: KronGroup | AdamGroup, idx: list[int]) -> None:
        """Step the blocks ``idx`` of a group, in chunks of at most ``max_step_numel`` elements
        (contiguous runs of blocks, so their state rows are views): the step's fp32 temporaries
        scale with the chunk, not with the group."""
        hp = self._hyper(grp)
        due = [b for run in self._runs(grp, idx) for b in grp.step(run, hp)]
        for reason in getattr(grp, "failure_log", ()):
            self.count_basis_failure(reason)
        if isinstance(grp, KronGroup):
            grp.failure_log.clear()
        self._note_due(grp, hp, due)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """As :meth:`torch.optim.Optimizer.zero_grad`; with ``cuda_graph=True``, the parameters of
        captured groups get zeroed views of their group's gradient buffer as ``.grad`` instead
        (whatever ``set_to_none`` says): the backward accumulates into the buffer the graph reads,
        so the step copies no gradient and no second copy of them is held."""
        super().zero_grad(set_to_none)
        for graphs in self._graphs.values():
            graphs.install_grad_views()

    def _runs(self, grp: KronGroup | AdamGroup, idx: list[int]) -> list[list[int]]:
        """``idx`` cut into contiguous runs of at most ``max_step_numel`` elements."""
        per = max(1, self._max_step_numel // max(grp.specs[0].numel, 1))
        runs: list[list[int]] = []
        for i in idx:
            if runs and i == runs[-1][-1] + 1 and len(runs[-1]) < per:
                runs[-1].append(i)
            else:
                runs.append([i])
        return runs

    def _note_due(self, grp: KronGroup | AdamGroup, hp: Hyper, due: list[int]) -> None:
        if due:  # submitted at the end of the step, with the group's other due blocks
            self._due.setdefault(id(grp), (grp, hp, []))[2].extend(due)

    def _submit_due(self) -> None:
        """Hand this step's due refreshes to the scheduler, one batch per group (with gradient
        release the blocks of a group are stepped param by param, from the hooks)."""
        for grp, hp, due in self._due.values():
            batches: dict[int, list[int]] = {}  # the plan's batches (blocks of two may share a phase)
            for i in sorted(due):
                batches.setdefault(grp.batch[i], []).append(i)
            for idx in batches.values():
                self.refresher.submit(grp, idx, hp, self._t + 1)
        self._due.clear()

    def count_basis_failure(self, reason: str) -> None:
        """A basis that could not be computed (the old one, or the identity, was kept)."""
        self.counters["basis_failures"] += 1
        self.counters[f"basis_failures: {reason}"] += 1

    def _skip_nonfinite(self, ranks: list[int] | None = None) -> None:
        self.counters["skipped_steps"] += 1
        self._consecutive_skips += 1
        if self._max_skips is not None and self._consecutive_skips > self._max_skips:
            where = f" on rank(s) {ranks}" if ranks and self.comm.sharded else ""
            raise FloatingPointError(
                f"SCAO: {self._consecutive_skips} steps in a row had non-finite gradients{where}; the "
                "run has diverged. Lower the learning rate, check the data on those ranks, or raise "
                "max_consecutive_skips."
            )
        if not self._warned_nonfinite:
            self._warned_nonfinite = True
            warnings.warn(
                "SCAO: non-finite gradient (NaN or inf); skipping this step for all parameters with "
                "the optimizer state untouched. Later skips are counted in optimizer.counters"
                "['skipped_steps'] without a warning.",
                RuntimeWarning,
                stacklevel=3,
            )

    # ------------------------------------------------------------- comm/backward overlap
    def _install_overlap_hooks(self, params: list[Tensor]) -> None:
        for h in self._overlap_hooks:
            h.remove()
        self._overlap_hooks = []
        if not (self._overlap and self.comm.sharded and self.comm.grad_sync == "scao"):
            return
        if self.config.grad_release:
            raise ValueError("overlap_comm and grad_release cannot be combined (grad_release is single-process)")
        self._bucket_params: list[set[int]] = [
            {self.specs[blk].param for slots in b.slots for blk, _, _ in slots} for b in self.comm.buckets
        ]
        self._buckets_of_param: dict[int, list[int]] = defaultdict(list)
        for k, pids in enumerate(self._bucket_params):
            for pid in pids:
                self._buckets_of_param[pid].append(k)
        self._reset_overlap()
        for pid in self._buckets_of_param:
            self._overlap_hooks.append(params[pid].register_post_accumulate_grad_hook(self._make_overlap_hook(pid)))

    def _reset_overlap(self) -> None:
        if self._overlap_hooks or getattr(self, "_bucket_params", None):
            self._waiting = [set(p) for p in self._bucket_params]

    def _make_overlap_hook(self, pid: int) -> Callable[[Tensor], None]:
        def hook(p: Tensor) -> None:
            if self._no_sync:
                return
            for k in self._buckets_of_param[pid]:
                if k in self.comm.in_flight:
                    raise RuntimeError(
                        "SCAO(overlap_comm=True): a gradient arrived for a bucket whose reduce-scatter "
                        "already started: when accumulating over several backward passes, wrap all but "
                        "the last in `with optimizer.no_sync():`, or use overlap_comm=False."
                    )
                self._waiting[k].discard(pid)
                if not self._waiting[k]:
                    self.comm.launch_bucket(self, k)

        return hook

    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        """Backward passes inside accumulate gradients locally without starting any communication."""
        old, self._no_sync = self._no_sync, True
        try:
            yield
        finally:
            self._no_sync = old

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
    def _block_key(self, b: int) -> tuple[int, str]:
        """(param id, ``b<k>``): block ``b`` is the k-th block of its parameter."""
        s = self.specs[b]
        first = self._blocks_of_param[s.param][0]
        return s.param, f"b{b - first}"

    def _export_blocks(self) -> dict[int, dict[str, Any]]:
        """This rank's blocks: state tensors, plus a refresh computed but not yet swapped in."""
        self._settle()
        pending = self.refresher.export()
        out = {}
        for grp in self.groups:
            for i, s in enumerate(grp.specs):
                st = grp.block_state(i)
                if s.index in pending:
                    st["pending"] = pending[s.index]
                out[s.index] = st
        return out

    def _import_blocks(self, blocks: dict[int, dict[str, Any]]) -> None:
        self.refresher.pending.clear()
        for b, st in blocks.items():
            if b not in self._where:
                continue  # owned by another rank
            grp, i = self._where[b]
            grp.load_block_state(i, st)
            if "pending" in st:
                self.refresher.restore(grp, i, st["pending"])

    def global_counters(self) -> dict[str, int]:
        """Counters summed over ranks (a collective when sharded: call it on every rank)."""
        self._settle()
        keys = sorted(set().union(*self.comm.gather_objects(sorted(self.counters))))
        return dict(zip(keys, (int(v) for v in self.comm.all_sum([self.counters.get(k, 0) for k in keys]))))

    def owned_blocks(self) -> set[int]:
        return set(self._where)

    def _meta(self) -> dict[str, Any]:
        """Replicated, JSON-able part of the state: param groups, settings, counters, step."""
        return {
            "param_groups": super().state_dict()["param_groups"],
            "config": self.config.as_dict(),
            "counters": self.global_counters(),
            "step": self._t,
            "version": 1,
        }

    def state_dict(self) -> dict[str, Any]:
        """Tensors-only state (int8 stays int8): ``state[param_id]['b<k>']`` for its k-th block.

        With several ranks this gathers every rank's blocks (a collective: call it on every
        rank), so any one rank's result resumes any world size; for sharded files use
        :mod:`scao_dist.shard.checkpoint`.
        """
        blocks: dict[int, dict[str, Any]] = {}
        for part in self.comm.gather_objects(self._export_blocks()):
            blocks.update(part)
        state: dict[int, dict[str, Any]] = {}
        for b in sorted(blocks):
            pid, key = self._block_key(b)
            state.setdefault(pid, {})[key] = blocks[b]
        meta = self._meta()
        return {"state": state, "param_groups": meta.pop("param_groups"), "scao": meta}

    def state_dict_parts(self) -> tuple[dict[int, dict[str, Any]], dict[str, Any]]:
        """(this rank's blocks by global id, replicated metadata): what a sharded checkpoint writes."""
        return self._export_blocks(), self._meta()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state from :meth:`state_dict` (written at any world size)."""
        blocks = {}
        for b in range(len(self.specs)):
            pid, key = self._block_key(b)
            entry = state_dict["state"].get(pid, {}).get(key)
            if entry is not None:
                blocks[b] = entry
        self.load_state_dict_parts(blocks, {"param_groups": state_dict["param_groups"], **state_dict.get("scao", {})})

    def load_state_dict_parts(self, blocks: dict[int, dict[str, Any]], meta: dict[str, Any]) -> None:
        """Load blocks (any superset of this rank's) and the metadata of :meth:`state_dict_parts`."""
        self._settle()
        saved_cfg = meta.get("config")
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
        super().load_state_dict({"state": {}, "param_groups": meta["param_groups"]})
        self.state.clear()
        self._import_blocks(blocks)
        self._t = int(meta.get("step", 0))
        self.counters = defaultdict(int, meta.get("counters", {}) if self.comm.rank == 0 else {})


def _undo_steps(launched: list[Work]) -> None:
    """Take back the step counts :meth:`GroupGraphs.launch` advanced for a step that was skipped."""
    for grp, idx, _, _ in launched:
        for i in idx:
            grp.steps[i] -= 1
