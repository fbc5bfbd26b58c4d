"""Stacked state and batched per-step math for groups of same-shaped blocks.

Blocks with equal :attr:`BlockSpec.key` (same param group, shape, side modes, dtype) are
stacked along a leading batch dim, so a transformer with L identical layers runs each kind of
weight as one batched product instead of L small ones. A group's state is a flat dict of
tensors (``self.t``), each with the batch as its first dim; a step on a subset of the blocks
(some params without grads, gradient release, chunks) selects those rows (views for a
contiguous run, else copies that are scattered back).

Per block of a :class:`KronGroup` (G is the m x n gradient block). A *dense* side (d <=
``full_factor_dim``) has a full eigenbasis ``F``; the block's state lives in the frame
``F_L^T (.) F_R`` of its dense sides (a stream or un-rotated side is the identity there). A
*stream* side has a truncated basis ``Q`` (d x k) acting inside that frame:

    G_F = F_L^T G F_R                          (the gradient in the frame)
    M   <- b1 M + (1-b1) G_F                   (int8 companded, in the frame)
    G'  = Q_L^T G_F Q_R,   M' = Q_L^T M Q_R      (core coordinates; Q = I for full sides)
    V'  <- b2 V' + (1-b2) G'^2                   (uint8 sqrt-companded)
    U_F = Q_L [ (M'/bc1) / (sqrt(V'/bc2) + eps) ] Q_R^T
        + Adam on the complement of Q (factored second moment)   only if a basis is truncated
    U   = F_L U_F F_R^T, optionally grafted;   W <- W (1 - lr wd) - lr U   (bf16 + correction bits)
    F^T L F <- bs F^T L F + (1-bs) G_F G_F^T      (dense sides: the factor in its own frame)
    P <- bs P + (1-bs) G_F G_F^T Qh                (stream sides: a sketch of the factor)

A bf16 gradient stays bf16 (``KronGroup.grad_dtype``): it only meets bf16 stream bases or a dense side's
stored bf16 frame, and bf16 x bf16 products are exact in fp32.

With complete bases this is SOAP: holding M in the eigenbasis frame and turning it with the
frame at a refresh is SOAP's rotated momentum. Holding it there matters for int8 storage:
rounding noise of a moment kept in original coordinates spreads evenly over the eigen-
directions, where Adam divides it by tiny second moments. The complement of a truncated basis,
``R_M = M - Q_L M' Q_R^T``, gets Adam with an Adafactor-style second moment of the residual
gradient (``r_i c_j / mean(r)``, O(m + n) memory), so those directions keep training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from . import kernels, precond, quant
from .blocks import BlockSpec, block_matrix, block_of, write_block
from .config import Config, Hyper
from .group_refresh import Refresh, RefreshMixin
from .kernels.reference import WeightBlocks
from .kernels.scalars import StepScalars, gated_
from .stacked import SEED_STEP, block_rows, block_seed, round32

CATEGORIES = ("moments", "scales", "factors", "bases", "error_bits", "other")


def _ema_(state: Tensor, fresh: Tensor, beta: float, hyper: StepScalars | None) -> Tensor:
    """``state <- beta state + (1 - beta) fresh`` in place, the same operations with or without ``hyper``,
    whose gate shut keeps ``state`` as it was; returns ``state``."""
    if hyper is None:
        return state.mul_(beta).add_(fresh, alpha=1 - beta)
    return gated_(state, torch.mul(state, beta).add_(fresh, alpha=1 - beta), hyper)


@dataclass
class DeviceInputs:
    """What a captured step (:mod:`scao_dist.capture`) reads from the device instead of host values:
    this step's lr and bias corrections (``hyper``) and, per dense side with int8 factors, the
    dither seeds of the stepped blocks (``seeds[side]``, (b,) int64)."""

    hyper: StepScalars
    seeds: dict[str, Tensor] = field(default_factory=dict)


def _category(name: str) -> str:
    if name == "ebits":
        return "error_bits"
    if name.endswith(".scales") or name.endswith(".amax"):
        return "scales"
    if name.endswith(".q") or name.endswith(".qh"):
        return "bases"
    if ".fac" in name or name.endswith(".sketch") or name.endswith(".trace"):
        return "factors"
    if name.startswith(("m", "v", "res_", "g_")):
        return "moments"
    return "other"


class Packed:
    """Read/write helpers for one moment stored in ``t`` as ``name.codes/.scales`` or fp32 ``name``.

    Quantisation groups run along the last dim only, so slicing rows or padding columns (in
    whole groups) never re-quantises anything: block states move between groups and ranks
    bit-exactly.
    """

    def __init__(self, name: str, kind: str, quantize: bool) -> None:
        self.name, self.kind, self.quantize = name, kind, quantize

    def alloc(self, t: dict[str, Tensor], shape: tuple[int, ...], device: torch.device) -> None:
        if self.quantize:
            *lead, n = shape
            code_dtype = torch.int8 if self.kind == "signed" else torch.uint8
            t[f"{self.name}.codes"] = torch.zeros(*lead, round32(n), dtype=code_dtype, device=device)
            t[f"{self.name}.scales"] = torch.zeros(*lead, quant.n_groups(n), dtype=torch.bfloat16, device=device)
        else:
            t[self.name] = torch.zeros(shape, dtype=torch.float32, device=device)

    def read(self, t: dict[str, Tensor], n: int, floor_zero: bool = False) -> Tensor:
        if not self.quantize:
            return t[self.name]
        c, s = t[f"{self.name}.codes"], t[f"{self.name}.scales"]
        if self.kind == "signed":
            return quant.decode_signed(c, s, n)
        return quant.decode_sqrt(c, s, n, floor_zero=floor_zero)

    def write(self, t: dict[str, Tensor], x: Tensor) -> None:
        if not self.quantize:
            t[self.name].copy_(x)
            return
        enc = quant.encode_signed if self.kind == "signed" else quant.encode_sqrt
        c, s = enc(x)
        t[f"{self.name}.codes"].copy_(c)
        t[f"{self.name}.scales"].copy_(s)

    def names(self) -> tuple[str, ...]:
        return (f"{self.name}.codes", f"{self.name}.scales") if self.quantize else (self.name,)

    def ema(
        self,
        t: dict[str, Tensor],
        x: Tensor,
        beta: float,
        out_dtype: torch.dtype = torch.float32,
        hyper: StepScalars | None = None,
    ) -> Tensor:
        """First moment: ``m <- beta m + (1 - beta) x``; returns ``m``, in ``out_dtype`` when quantised (the
        int8 codes are the state; the value returned feeds this step only), else the fp32 state. ``hyper``:
        its gate (shut: the state is kept)."""
        if self.quantize:
            codes, scales = t[f"{self.name}.codes"], t[f"{self.name}.scales"]
            return kernels.ema_signed_(codes, scales, x, beta, out_dtype, hyper=hyper)
        return _ema_(t[self.name], x, beta, hyper)

    def adam(
        self,
        t: dict[str, Tensor],
        g: Tensor,
        m: Tensor,
        beta2: float,
        bc1: Tensor | float,
        bc2: Tensor | float,
        eps: float,
        hyper: StepScalars | None = None,
        floor: Tensor | None = None,
    ) -> Tensor:
        """Second moment ``v <- beta2 v + (1 - beta2) g^2``; returns ``(m/bc1) / (sqrt(max(v, floor)/bc2) + eps)``
        (bias corrections from ``hyper`` when given: only the int8 path takes it; ``floor`` broadcasts
        to ``(b, 1, 1)``, none when ``None``)."""
        if self.quantize:
            codes, scales = t[f"{self.name}.codes"], t[f"{self.name}.scales"]
            return kernels.rotated_adam_(codes, scales, g, m, beta2, bc1, bc2, eps, hyper=hyper, floor=floor)
        if hyper is not None:
            raise ValueError("device-side step scalars need the int8 second moment (quantize it)")
        v = t[self.name].mul_(beta2).addcmul_(g, g, value=1 - beta2)
        if floor is not None:
            v = torch.maximum(v, floor)
        return (m / bc1) / ((v / bc2).sqrt() + eps)

    def pad(self, t: dict[str, Tensor], inner: tuple[int, int]) -> None:
        """Zero-pad a ``(B, r, c)`` moment to ``(B, *inner)`` without touching any stored code."""
        rows, cols = inner
        if not self.quantize:
            x = t[self.name]
            t[self.name] = torch.nn.functional.pad(x, (0, cols - x.shape[-1], 0, rows - x.shape[-2]))
            return
        c, s = t[f"{self.name}.codes"], t[f"{self.name}.scales"]
        t[f"{self.name}.codes"] = torch.nn.functional.pad(c, (0, round32(cols) - c.shape[-1], 0, rows - c.shape[-2]))
        t[f"{self.name}.scales"] = torch.nn.functional.pad(
            s, (0, quant.n_groups(cols) - s.shape[-1], 0, rows - s.shape[-2])
        )


class Side:
    """Layout of one side (rows ``"L"`` or columns ``"R"``) of a group; tensors live in the group."""

    def __init__(self, name: str, mode: str, d: int, batch: int, cfg: Config) -> None:
        self.name, self.mode, self.d = name, mode, d
        self.p = cfg.oversample if mode == "stream" else 0
        self.K = d if mode == "none" else 0  # allocated basis width (max rank over the blocks)
        self.ranks = [self.K] * batch  # valid basis columns per block

    @property
    def rotated(self) -> bool:
        return self.mode != "none"

    def rank_cap(self, rank_max: int) -> int:
        return min(rank_max, self.d - self.p)

    def width_for(self, k: int) -> int:
        """Allocated width for a basis of ``k`` columns: ``k`` rounded up to a multiple of 16, at most
        ``d - p``. Growing in steps of 16 keeps the number of distinct stacked shapes (and with them
        Triton/cuBLAS recompiles and allocator churn) small while ranks creep up one column at a time."""
        return min(-(-k // 16) * 16, self.d - self.p)


class _Group:
    """What both group kinds share: specs, params, stacked tensors, gather/scatter, bytes."""

    def __init__(self, specs: Sequence[BlockSpec], params: Sequence[Tensor], cfg: Config, device: torch.device):
        self.specs = list(specs)
        self.params = params
        self.cfg = cfg
        self.device = device
        self.B = len(self.specs)
        self.steps = [0] * self.B  # Adam steps applied, per block
        self.t: dict[str, Tensor] = {}
        self.bf16 = self.specs[0].dtype == torch.bfloat16

    def _device_list(self, values: tuple, dtype: torch.dtype) -> Tensor:
        """A small constant as a device tensor, cached (no host-to-device copy on most steps)."""
        cache = self.__dict__.setdefault("_consts", {})
        key = (values, dtype)
        if key not in cache:
            if self.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
                raise RuntimeError(f"{key} is not cached: a captured step must not copy host data (warm it up first)")
            if len(cache) > 64:
                cache.clear()
            cache[key] = torch.tensor(values, dtype=dtype, device=self.device)
        return cache[key]

    # -- params -------------------------------------------------------------------------
    def block_view(self, i: int, tensor: Tensor) -> Tensor:
        s = self.specs[i]
        return block_of(tensor, s)

    def gather(self, idx: Sequence[int], grads: bool) -> Tensor:
        """Stack the blocks ``idx`` of the params (or of their grads) into ``(b, m, n)``."""
        src = [self.params[self.specs[i].param] for i in idx]
        return torch.stack([self.block_view(i, p.grad if grads else p) for i, p in zip(idx, src)])

    def gather_grads(self, idx: Sequence[int], dtype: torch.dtype = torch.float32) -> Tensor:
        """The blocks' gradients as one ``(b, m, n)`` tensor of ``dtype`` (one multi-tensor copy)."""
        m, n = self.specs[0].shape
        out = torch.empty((len(idx), m, n), dtype=dtype, device=self.device)
        views = [self.block_view(i, self.params[self.specs[i].param].grad) for i in idx]
        torch._foreach_copy_(list(out.unbind(0)), views)
        return out

    def scatter_params(self, idx: Sequence[int], w: Tensor) -> None:
        for j, i in enumerate(idx):
            write_block(self.params[self.specs[i].param], self.specs[i], w[j])

    # -- weights held by the group ----------------------------------------------------------
    def adopt_params(self) -> None:
        """Hold the group's weights in one stacked ``(B, m, n)`` buffer and make the parameters
        views into it, so a step updates them in place (no stack/scatter copies per step).

        A parameter qualifies when it owns its whole storage (not a view into someone else's flat
        buffer) and its blocks here are all of it, cut along rows only, at consecutive positions:
        its rows then ARE those consecutive slices of the buffer (a 16384 x 2048 MLP weight split
        into four 4096-row blocks is ``buf[i:i + 4]``). Column-split parameters are not contiguous
        slices, so they are not adopted: if any block of the group does not qualify, nothing is
        (the step indexes the buffer by runs of blocks). The ``Parameter`` objects stay the same;
        only their data moves. If anything later swaps a parameter's data (``model.to(...)``, a
        wrapper), the group notices and falls back to copying.
        """
        self.wbuf: Tensor | None = None
        runs = self.param_runs()
        if not all(self._adoptable(pos) for pos in runs.values()):
            return
        m, n = self.specs[0].shape
        buf = torch.empty((self.B, m, n), dtype=self.params[self.specs[0].param].dtype, device=self.device)
        with torch.no_grad():
            for pos in runs.values():
                p = self.params[self.specs[pos[0]].param]
                rows = buf[pos[0] : pos[-1] + 1]
                rows.copy_(p.detach().reshape(rows.shape))
                p.data = rows.view(p.shape)
        self.wbuf = buf
        self._ptrs = [self.params[s.param].data_ptr() for s in self.specs]

    def _adoptable(self, pos: list[int]) -> bool:
        """Blocks ``pos`` (in order) are one whole parameter that owns its storage (:meth:`whole_rows`)."""
        p = self.params[self.specs[pos[0]].param]
        return (
            p.device == self.device
            and p.is_contiguous()
            and p.storage_offset() == 0
            and p.untyped_storage().nbytes() == p.numel() * p.element_size()
            and self.whole_rows(pos)
        )

    def whole_rows(self, pos: Sequence[int]) -> bool:
        """Blocks ``pos`` (in order) are one whole parameter, cut along rows only, consecutive here: its
        2-D view is then rows ``pos[0] .. pos[-1]`` of a stacked ``(B, m, n)`` buffer."""
        specs = [self.specs[i] for i in pos]
        rows, cols = block_matrix(self.params[specs[0].param], specs[0]).shape
        return (
            list(pos) == list(range(pos[0], pos[0] + len(pos)))
            and all(s.c0 == 0 and s.c1 == cols for s in specs)
            and [s.r0 for s in specs] == [k * specs[0].shape[0] for k in range(len(specs))]
            and specs[-1].r1 == rows
        )

    def param_runs(self) -> dict[int, list[int]]:
        """Each parameter of the group -> its blocks' positions here, in order."""
        runs: dict[int, list[int]] = {}
        for i, s in enumerate(self.specs):
            runs.setdefault(s.param, []).append(i)
        return runs

    def weights(self, idx: Sequence[int], where_they_are: bool = False) -> tuple[Tensor | WeightBlocks, bool]:
        """``(b, m, n)`` weights of blocks ``idx`` and whether they are the parameters themselves
        (a view: updated in place) or a stacked copy (to be scattered back). ``where_they_are``: blocks
        that are not rows of the adopted buffer (column blocks of wider weights) come back as
        :class:`WeightBlocks`, the views and their address table, for a kernel that updates them in
        place (the complement's) instead of a stacked copy: two strided copies of every weight fewer
        per step (~0.7 ms on the 405M GPT's column-blocked weights, ``session_zu``)."""
        idx = list(idx)
        wbuf = getattr(self, "wbuf", None)
        if wbuf is not None and idx == list(range(idx[0], idx[0] + len(idx))):
            if all(self.params[self.specs[i].param].data_ptr() == self._ptrs[i] for i in idx):
                return wbuf[idx[0] : idx[0] + len(idx)], True
            self.wbuf = None  # something replaced the parameters' data: copy from now on
        if where_they_are:
            params = [self.params[self.specs[i].param] for i in idx]
            views = [self.block_view(i, p) for i, p in zip(idx, params)]
            storage = [p.untyped_storage().data_ptr() for p in params]
            if all(v.untyped_storage().data_ptr() == st for v, st in zip(views, storage)):  # views, not copies
                table = self._device_list(tuple(v.data_ptr() for v in views), torch.int64)
                blocks = WeightBlocks.of(views, table)
                if blocks is not None:
                    return blocks, True
        return self.gather(idx, grads=False), False

    # -- state rows ---------------------------------------------------------------------
    def select(self, idx: Sequence[int]) -> tuple[dict[str, Tensor], bool]:
        """State rows of ``idx``: views when ``idx`` is a contiguous run of blocks (updated in
        place, nothing to put back), else copies (``put_back`` writes them)."""
        idx = list(idx)
        if idx == list(range(idx[0], idx[0] + len(idx))):
            if len(idx) == self.B:
                return self.t, True
            a, b = idx[0], idx[0] + len(idx)
            return {k: v[a:b] for k, v in self.t.items()}, True
        ix = torch.tensor(idx, device=self.device)
        return {k: v.index_select(0, ix) for k, v in self.t.items()}, False

    def put_back(self, idx: Sequence[int], sub: dict[str, Tensor], whole: bool) -> None:
        if whole:
            return
        ix = torch.tensor(list(idx), device=self.device)
        for k, v in sub.items():
            self.t[k].index_copy_(0, ix, v)

    def bias(self, idx: Sequence[int], hp: Hyper, ndim: int, ahead: int = 0) -> tuple[Tensor | float, Tensor | float]:
        """Adam bias corrections ``1 - beta^t`` (floats when all blocks are at the same step), at the
        blocks' step counts plus ``ahead``."""
        ts = [self.steps[i] + ahead for i in idx]
        if all(t == ts[0] for t in ts):
            return self.bias_at(ts[0], hp)
        t = torch.tensor(ts, dtype=torch.float64)
        shape = (-1,) + (1,) * (ndim - 1)
        bc1 = (1.0 - hp.beta1**t).float().reshape(shape).to(self.device)
        bc2 = (1.0 - hp.beta2**t).float().reshape(shape).to(self.device)
        return bc1, bc2

    @staticmethod
    def bias_at(t: int, hp: Hyper) -> tuple[float, float]:
        """The bias corrections ``(1 - beta1^t, 1 - beta2^t)`` at step ``t``."""
        return 1.0 - hp.beta1**t, 1.0 - hp.beta2**t

    # -- captured steps (scao_dist.capture) --------------------------------------------------
    def capture_key(self) -> tuple:
        """Host-side facts a captured step's launches depend on, beyond its state tensors."""
        wbuf = getattr(self, "wbuf", None)
        return (None if wbuf is None else wbuf.data_ptr(),)

    def derived_tensors(self) -> list[Tensor]:
        """Cached tensors (not state) that a captured step reads: kept alive with its graph."""
        return list(self.__dict__.get("_consts", {}).values())

    def nbytes(self) -> dict[str, int]:
        out = dict.fromkeys(CATEGORIES, 0)
        for k, v in self.t.items():
            out[_category(k)] += v.numel() * v.element_size()
        return out

    def numel(self) -> int:
        return sum(s.numel for s in self.specs)


class AdamGroup(_Group):
    """1-D and tiny parameters: AdamW with the same int8 moments and correction bits."""

    def __init__(self, specs, params, cfg, device):
        super().__init__(specs, params, cfg, device)
        n = self.specs[0].numel
        self.n = n
        self.m = Packed("m", "signed", cfg.q("m"))
        self.v = Packed("v", "sqrt", cfg.q("v"))
        self.m.alloc(self.t, (self.B, n), device)
        self.v.alloc(self.t, (self.B, n), device)
        if self.bf16:
            bits = torch.int8 if cfg.correction_bits == 8 else torch.int16
            self.t["ebits"] = torch.zeros(self.B, n, dtype=bits, device=device)
        # bf16 parameters' gradients stay bf16 where the fused AdamW kernel reads them (it widens them
        # exactly, so the step is the fp32 gradient's): half the bytes, and .grad can be a buffer view
        self.grad_dtype = torch.bfloat16 if self.bf16 and self.capturable() else torch.float32

    def step(self, idx: Sequence[int], hp: Hyper) -> list[int]:
        g = self.gather_grads(idx, self.grad_dtype)
        for i in idx:
            self.steps[i] += 1
        bc1, bc2 = self.bias(idx, hp, 2)
        self.update(idx, hp, g, bc1, bc2)
        return []

    def capturable(self) -> bool:
        """Can a step of this group read its scalars from the device (:mod:`scao_dist.capture`)?"""
        return self.m.quantize and self.v.quantize

    def update(
        self,
        idx: Sequence[int],
        hp: Hyper,
        g: Tensor,
        bc1: Tensor | float,
        bc2: Tensor | float,
        dev: DeviceInputs | None = None,
    ) -> None:
        """The device work of a step of blocks ``idx`` from their gradients ``g`` (b, m, n), with the
        step counts already advanced (lr and bias corrections from ``dev`` when given)."""
        g = g.reshape(len(idx), self.n)
        w3, in_place = self.weights(idx)
        w = w3.reshape(len(idx), self.n)
        s, whole = self.select(idx)
        rho = s.get("ebits")
        if self.m.quantize and self.v.quantize:
            kernels.adamw_(
                w, rho, g, s["m.codes"], s["m.scales"], s["v.codes"], s["v.scales"],
                lr=hp.lr, beta1=hp.beta1, beta2=hp.beta2, bc1=bc1, bc2=bc2, eps=hp.eps, wd=hp.weight_decay,
                hyper=dev.hyper if dev is not None else None,
            )  # fmt: skip
        else:
            if dev is not None:
                raise ValueError("device-side step scalars need int8 moments (quantize m and v)")
            m = self.m.ema(s, g, hp.beta1)
            u = self.v.adam(s, g, m, hp.beta2, bc1, bc2, hp.eps)
            kernels.apply_update_(w, rho, u, hp.lr, hp.weight_decay)
        self.put_back(idx, s, whole)
        if not in_place:
            self.scatter_params(idx, w.reshape(len(idx), *self.specs[0].shape))

    def block_state(self, i: int) -> dict[str, Tensor]:
        out = {k: v[i].clone() for k, v in self.t.items()}
        out["step"] = torch.tensor(self.steps[i])
        return out

    def load_block_state(self, i: int, st: dict[str, Tensor]) -> None:
        for k, v in self.t.items():
            v[i].copy_(st[k])
        self.steps[i] = int(st["step"])


class KronGroup(RefreshMixin, _Group):
    """Blocks preconditioned SOAP-style in the eigenbases of their Kronecker factors."""

    bf16_left_products: bool = True
    """Form the complement's left factors ``Q_L C`` as bf16 products of the stored bf16 basis (see
    :meth:`_complement_factors`); ``False``: TF32 products of fp32 operands, rounded to bf16 after."""

    def __init__(self, specs, params, cfg, device):
        super().__init__(specs, params, cfg, device)
        self.m_dim, self.n_dim = self.specs[0].shape
        self.sides = (
            Side("L", self.specs[0].left, self.m_dim, self.B, cfg),
            Side("R", self.specs[0].right, self.n_dim, self.B, cfg),
        )
        self.ready = [False] * self.B  # first basis built (SOAP's step 1 done)
        self.failure_log: list[str] = []  # reasons of bases not computed (old/identity kept), drained by SCAO
        self.phase = [0] * self.B  # refresh phase: refresh when (t + phase) % freq == 0
        self.batch = [0] * self.B  # refresh batch (shard/plan.py): blocks due together refresh together
        self.bdt = torch.bfloat16 if cfg.q("bases") else torch.float32  # bases and sketches
        self.mom = Packed("m", "signed", cfg.q("m"))
        self.vp = Packed("v", "sqrt", cfg.q("v"))
        self.mom.alloc(self.t, (self.B, self.m_dim, self.n_dim), device)
        self.t["res_row"] = torch.zeros(self.B, self.m_dim, device=device)
        self.t["res_col"] = torch.zeros(self.B, self.n_dim, device=device)
        self.t["g_row"] = torch.zeros(self.B, self.m_dim, device=device)
        self.t["g_col"] = torch.zeros(self.B, self.n_dim, device=device)
        if self.bf16:
            bits = torch.int8 if cfg.correction_bits == 8 else torch.int16
            self.t["ebits"] = torch.zeros(self.B, self.m_dim, self.n_dim, dtype=bits, device=device)
        for side in self.sides:
            n = side.name
            if side.mode == "dense":
                if cfg.q("factors"):
                    self.t[f"{n}.fac.codes"] = torch.zeros(self.B, side.d, side.d, dtype=torch.int8, device=device)
                    self.t[f"{n}.fac.diag"] = torch.zeros(self.B, side.d, device=device)
                else:
                    self.t[f"{n}.fac"] = torch.zeros(self.B, side.d, side.d, device=device)
                self.t[f"{n}.q"] = torch.zeros(self.B, side.d, 0, dtype=self.bdt, device=device)
            elif side.mode == "stream":
                self.t[f"{n}.qh"] = torch.zeros(self.B, side.d, side.p, dtype=self.bdt, device=device)
                self.t[f"{n}.sketch"] = torch.zeros(self.B, side.d, side.p, dtype=self.bdt, device=device)
                self.t[f"{n}.trace"] = torch.zeros(self.B, device=device)
            if side.rotated:
                self.t[f"{n}.eig"] = torch.zeros(self.B, 0, device=device)
        kl, kr = (s.K for s in self.sides)
        self.vp.alloc(self.t, (self.B, kl, kr), device)
        # bf16 gradients stay bf16 where every product that reads them has bf16 bases as its other
        # operand (bf16 stream bases, or the stored bf16 frame of a dense side: :meth:`to_frame`):
        # bf16 x bf16 products are exact in fp32, so the results are those of the fp32 gradient (up to
        # summation order) at half the bytes
        modes = [side.mode for side in self.sides]
        self.grad_dtype = (
            torch.bfloat16
            if self.bf16 and self.bdt == torch.bfloat16 and ("dense" in modes or "stream" in modes)
            else torch.float32
        )
        # the first moment as the step's products read it: bf16 with the bf16 gradient when no dense frame
        # turns G_F into an fp32 product (_rotate_moment)
        self.m_dtype = torch.bfloat16 if self.grad_dtype == torch.bfloat16 and "dense" not in modes else torch.float32
        # the update's coefficient factor in the complement, against a stored bf16 basis: bf16 as well
        # (_complement_factors)
        self.u_dtype = torch.bfloat16 if self.bdt == torch.bfloat16 else torch.float32
        # the coefficient factors of the projections of G and M, likewise (_complement_factors)
        self.p_dtype = self.u_dtype
        self._ginv: dict[str, Tensor] = {}  # derived from the stored stream bases (see _gram_inverses)
        self._ginv_stale: dict[str, set[int]] = {}

    # -- bases ----------------------------------------------------------------------------
    def frame(self, s: dict[str, Tensor], side: Side) -> Tensor | None:
        """fp32 ``(b, d, d)`` eigenbasis of a dense side: the frame the block's state lives in."""
        return s[f"{side.name}.q"].float() if side.mode == "dense" else None

    def tracked(self, s: dict[str, Tensor], side: Side) -> Tensor | None:
        """``(b, d, K + p)`` tracked basis of a stream side as stored (bf16, or fp32 without ``bases``
        quantization), probes last (original coordinates); its first ``K`` columns are the truncated
        basis ``Q``."""
        return s[f"{side.name}.qh"] if side.mode == "stream" else None

    def to_frame(self, g: Tensor, s: dict[str, Tensor], fl: Tensor | None, fr: Tensor | None) -> Tensor:
        """``G_F = F_L^T G F_R`` (:meth:`rotate` with the fp32 frames ``fl``, ``fr``). A bf16 ``G``
        (:attr:`grad_dtype`) meets the first dense side's frame as stored, in bf16: its values are the fp32
        frame's, so that product is exact in either dtype and only its summation order differs, at half the
        bytes and twice the tensor-core rate; a second product takes that fp32 result and ``fr``."""
        if g.dtype != torch.bfloat16 or (fl is None and fr is None):
            return self.rotate(g, fl, fr)
        left, right = (s[f"{side.name}.q"] if side.mode == "dense" else None for side in self.sides)
        if left is not None:
            x = matmul_f32(left.mT, g)
            return x @ fr if fr is not None else x
        return matmul_f32(g, right)

    def rotate(self, x: Tensor, ql: Tensor | None, qr: Tensor | None) -> Tensor:
        """``Q_L^T x Q_R`` (a ``None`` side is the identity)."""
        if ql is not None:
            x = ql.mT @ x
        if qr is not None:
            x = x @ qr
        return x

    def unrotate(self, x: Tensor, ql: Tensor | None, qr: Tensor | None) -> Tensor:
        """``Q_L x Q_R^T`` (x may carry extra leading dims)."""
        if ql is not None:
            x = ql @ x
        if qr is not None:
            x = x @ qr.mT
        return x

    def _rotate_moment(self, m: Tensor, q32: Bases32, stored: tuple[Tensor | None, Tensor | None]) -> Tensor:
        """``Q_L^T M Q_R`` (fp32). A bf16 ``M`` (:attr:`m_dtype`, bf16 with :attr:`grad_dtype`: bf16 stream
        bases, no dense frame) meets the bases as stored in its full-size product, exactly and at half
        the bytes of fp32; with two stream sides the small second product takes the fp32 basis of the
        shorter side (:meth:`_core`'s choice, so a step converts one basis to fp32, not two).

        The step rounds ``M`` to bf16 once, in :func:`kernels.ema_signed_`, and uses that same ``M``
        here and in the complement (``M - Q_L C_M Q_R^T``, whose cancellation needs one ``M`` in
        both). Its relative error, at most ``2^-9``, is under the int8 code's own (``2/q`` at code
        ``q``, ``>= 2^-6``), and ``M`` is written and read three times per step: 6 bytes a weight
        fewer than in fp32."""
        if m.dtype != torch.bfloat16:
            return self.rotate(m, q32[0], q32[1])
        qls, qrs = stored
        if qls is not None and qrs is not None and not self._right_second:
            return q32[0].mT @ matmul_f32(m, qrs)
        if qls is not None:
            x = matmul_f32(qls.mT, m)
            return x @ q32[1] if qrs is not None else x
        return matmul_f32(m, qrs) if qrs is not None else m.float()

    def truncated(self, idx: Sequence[int]) -> list[bool]:
        """Per block: does some rotated side keep fewer basis vectors than its dimension?"""
        out = [False] * len(idx)
        for side in self.sides:
            if side.rotated:
                ranks, d = side.ranks, side.d
                out = [was or ranks[i] < d for was, i in zip(out, idx)]
        return out

    def truncated_all(self) -> tuple[bool, ...]:
        """:meth:`truncated` of every block, worked out again only when some side's ranks changed (a step's
        host work looks it up per chunk: :meth:`prepare_captured`, :meth:`capture_key`)."""
        ranks = tuple([(side.mode, side.d, tuple(side.ranks)) for side in self.sides])
        last = self.__dict__.get("_truncated")
        if last is None or last[0] != ranks:
            last = self._truncated = (ranks, tuple(self.truncated(range(self.B))))
        return last[1]

    # -- the step -------------------------------------------------------------------------
    def step(self, idx: Sequence[int], hp: Hyper) -> list[int]:
        """Update blocks ``idx`` from their grads; returns the blocks whose refresh is now due."""
        fresh = [i for i in idx if not self.ready[i]]
        warm = [i for i in idx if self.ready[i]]
        due: list[int] = []
        if warm:
            due += self._adam_step(warm, hp)
        if fresh:
            self._first_step(fresh, hp)
        return due

    def _adam_step(self, idx: Sequence[int], hp: Hyper) -> list[int]:
        """One step of the blocks ``idx`` (see the module docstring for the math).

        Everything per block lives in the *frame* of its dense sides' eigenbases (``F``, full
        d x d; the identity for stream and un-rotated sides): ``G_F = F_L^T G F_R``, the first
        moment, the complement and grafting statistics. The first moment in particular must be:
        int8 rounding noise of a moment kept in original coordinates lands evenly on all
        eigen-directions, where Adam divides it by near-zero second moments (on a rank-deficient
        toy that alone cost most of the progress). Stream sides' truncated bases ``Q`` act inside
        that frame.
        """
        g = self.gather_grads(idx, self.grad_dtype)
        for i in idx:
            self.steps[i] += 1
        bc1, bc2 = self.bias(idx, hp, 3)
        self.update(idx, hp, g, bc1, bc2)
        return self.due(idx, hp)

    def due(self, idx: Sequence[int], hp: Hyper) -> list[int]:
        """The blocks of ``idx`` whose refresh is due after the step just taken."""
        return [i for i in idx if (self.steps[i] + self.phase[i]) % hp.precond_freq == 0]

    def capturable(self) -> bool:
        """Can a step of this group read its scalars from the device (:mod:`scao_dist.capture`)?
        Needs the int8 moments (their kernels take them) and no grafting (its torch math reads
        the bias corrections as floats)."""
        return self.mom.quantize and self.vp.quantize and self.cfg.graft == "none"

    def update(
        self,
        idx: Sequence[int],
        hp: Hyper,
        g: Tensor,
        bc1: Tensor | float,
        bc2: Tensor | float,
        dev: DeviceInputs | None = None,
    ) -> None:
        """The device work of a step of warm blocks ``idx`` from their gradients ``g`` (b, m, n) of
        :attr:`grad_dtype`, with the step counts already advanced. With ``dev`` the lr, bias
        corrections and dither seeds come from the device (a captured step: ``hp``'s lr and weight
        decay and ``bc1``/``bc2`` are then not read)."""
        hyper = dev.hyper if dev is not None else None
        s, whole = self.select(idx)
        fl, fr = (self.frame(s, side) for side in self.sides)
        stored = tuple(self.tracked(s, side) for side in self.sides)
        kl, kr = (side.K for side in self.sides)
        qls, qrs = (q[..., :k] if q is not None else None for q, k in zip(stored, (kl, kr)))

        gf = self.to_frame(g, s, fl, fr)
        del g
        if gf.dtype == torch.bfloat16:  # bf16 G_F (grad_dtype) meets the bases as stored, in bf16
            halves = self._stream_halves(gf, *stored)
            q32 = Bases32((qls, qrs))
        else:
            qhl, qhr = (q.float() if q is not None else None for q in stored)
            halves = self._stream_halves(gf, qhl, qhr)
            q32 = Bases32((qls, qrs), [q[..., :k] if q is not None else None for q, k in zip((qhl, qhr), (kl, kr))])
        g_rot = self._core(gf, halves, q32)
        mf = self.mom.ema(s, gf, hp.beta1, self.m_dtype, hyper=hyper)
        m_rot = self._rotate_moment(mf, q32, (qls, qrs))
        u_rot = self.vp.adam(s, g_rot, m_rot, hp.beta2, bc1, bc2, hp.eps, hyper=hyper, floor=self._rot_floor(s))

        sumsq = stats = None
        trunc = self.truncated(idx)
        factors = None
        if any(trunc):  # the update and the projections of G_F and M as low-rank products X Y^T
            ginv = [self._gram_inverses(side, idx, q) for side, q in zip(self.sides, (qls, qrs))]
            factors = self._complement_factors(u_rot, g_rot, m_rot, q32, ginv, (qls, qrs))
        mask = self._device_list(tuple(trunc), torch.bool) if factors is not None else None
        if self.cfg.graft == "norm" or any(side.mode == "stream" for side in self.sides):  # (truncated => stream)
            # one read of G_F: its row/column mean squares (the norm graft, the complement's floor), ||G_F||^2
            # (stream traces) and, with a truncated basis, those of the residual G_F - Q_L C_G Q_R^T
            sumsq, cs, floor = kernels.residual_stats(
                gf, *(factors["g"] if factors else (None, None)), s["g_row"], s["g_col"], s["res_row"],
                s["res_col"], mask, hp.beta2, all(trunc), hyper,
            )  # fmt: skip
            stats = (cs, floor) if cs is not None and floor is not None else None
        # the update reaches the weights straight from the complement kernel when nothing is left to
        # do to it in between (no dense frame to rotate back, no grafting): it never lands in memory
        fused = factors is not None and fl is None and fr is None and self.cfg.graft == "none"
        w, in_place = self.weights(idx, where_they_are=fused)
        if factors is not None:
            target = (w, s.get("ebits")) if fused else None
            uf = self._with_complement(s, mf, factors, hp, bc1, bc2, mask, stats, target=target, hyper=hyper)
        else:
            uf = self.unrotate(u_rot, q32[0], q32[1])
        if not fused:
            if hyper is not None and self.cfg.graft != "none":
                raise ValueError("device-side step scalars do not cover grafting (graft='none' only)")
            uf = self._graft(s, uf, mf, hp, bc1, bc2)
            u = self.unrotate(uf, fl, fr)
            kernels.apply_update_(w, s.get("ebits"), u, hp.lr, hp.weight_decay, hyper=hyper)
        if not in_place:
            self.scatter_params(idx, w)
        seeds = dev.seeds if dev is not None else None
        self._update_factors(s, idx, gf, hp, self.sides, halves, sumsq, seeds, hyper)
        self.put_back(idx, s, whole)  # (copies the kernels left as they were when the gate is shut)

    def capture_key(self) -> tuple:
        widths = tuple([side.K for side in self.sides])
        ginv = tuple([(k, v.data_ptr()) for k, v in self._ginv.items()])
        trunc = self.truncated_all()
        dtypes = (self.m_dtype, self.u_dtype, self.p_dtype, self.bf16_left_products)
        return (*super().capture_key(), widths, trunc, ginv, *dtypes)

    def derived_tensors(self) -> list[Tensor]:
        return super().derived_tensors() + list(self._ginv.values())

    def prepare_captured(self, runs: Sequence[Sequence[int]]) -> None:
        """The host-side part of a step that a captured step cannot hold: the Gram inverses of the
        bases swapped in since the last step (the graph reads them from the cache), computed from
        the same fp32 bases as :meth:`update` would."""
        trunc = self.truncated_all()
        stream = [side for side in self.sides if side.mode == "stream"]
        if not stream or not any(trunc):
            return
        for run in runs:
            if not any(map(trunc.__getitem__, run)):
                continue
            for side in stream:
                cache, stale = self._ginv.get(side.name), self._ginv_stale.get(side.name)
                if cache is None or cache.shape[-1] != side.K or (stale and any(i in stale for i in run)):
                    self._gram_inverses(side, run, block_rows(self.t[f"{side.name}.qh"], list(run))[..., : side.K])

    def _gram_inverses(self, side: Side, idx: Sequence[int], q: Tensor | None) -> Tensor | None:
        """``(Q^T Q)^-1`` of the blocks ``idx`` of a stream side (``q`` = their ``(b, d, K)`` bases as
        stored; the stale ones are taken to fp32 here), cached per block: it changes only when a
        basis does, so each block's is recomputed once after a swap, a growth of ``K`` or a load, not
        at every step. Derived data (not in the state dict); ``_basis_changed`` marks a block stale."""
        if q is None:
            return None
        n, k = side.name, q.shape[-1]
        cache = self._ginv.get(n)
        if cache is None or cache.shape[-1] != k:
            cache = self._ginv[n] = torch.zeros(self.B, k, k, device=q.device)
            self._ginv_stale[n] = set(range(self.B))
        stale = self._ginv_stale[n]
        rows = [j for j, i in enumerate(idx) if i in stale]
        if rows:
            fresh = _gram_inverse((q if len(rows) == len(idx) else q[rows]).float())
            for r, j in enumerate(rows):
                cache[idx[j]].copy_(fresh[r])
                stale.discard(idx[j])
        a = idx[0]
        if list(idx) == list(range(a, a + len(idx))):
            return cache[a : a + len(idx)]
        return cache[list(idx)]

    def _basis_changed(self, i: int) -> None:
        for stale in self._ginv_stale.values():
            stale.add(i)

    def _seeds(self, idx: Sequence[int], side: str) -> Tensor:
        """``block_seed(block, side, step)`` for the blocks ``idx`` as a device tensor (dither seeds)."""
        base = self._device_list(tuple(block_seed(self.specs[i].index, side, 0) for i in idx), torch.int64)
        steps = [self.steps[i] for i in idx]
        if all(t == steps[0] for t in steps):
            return base + steps[0] * SEED_STEP
        return base + self._device_list(tuple(steps), torch.int64) * SEED_STEP

    def _stream_halves(self, gf: Tensor, qhl: Tensor | None, qhr: Tensor | None) -> dict[str, Tensor]:
        """``Qh_L^T G_F`` and ``G_F Qh_R`` (tracked bases plus probes) of the stream sides, once: the core
        rotation and the sketch updates both start from them. ``G_F`` and the bases are both fp32 or both
        bf16 (:attr:`grad_dtype`). The halves are fp32, except with bf16 operands and two stream sides the
        half that does not feed the core (:meth:`_core`): only its sketch reads it, as bf16, so it is
        formed in bf16 (rounded once from the product's fp32 sums) rather than in fp32 and converted."""
        out = {}
        low = gf.dtype == torch.bfloat16 and qhl is not None and qhr is not None
        if qhl is not None:
            out["L"] = torch.bmm(qhl.mT, gf) if low and not self._right_second else matmul_f32(qhl.mT, gf)
        if qhr is not None:
            out["R"] = torch.bmm(gf, qhr) if low and self._right_second else matmul_f32(gf, qhr)
        return out

    @property
    def _right_second(self) -> bool:
        """With two stream sides, is ``Q_R`` the second factor of the core products (``(Q_L^T X) Q_R``: the
        shorter side, ``n <= m``), so that only its basis is needed in fp32?"""
        return self.n_dim <= self.m_dim

    def _core(self, gf: Tensor, halves: dict[str, Tensor], q32: Bases32) -> Tensor:
        """``Q_L^T G_F Q_R`` from whichever half makes the second product smaller (:attr:`_right_second`)."""
        kl, kr = (side.K for side in self.sides)
        if "L" in halves and "R" in halves:
            if self._right_second:
                return halves["L"][:, :kl] @ q32[1]
            return q32[0].mT @ halves["R"][..., :kr]
        if "L" in halves:
            return halves["L"][:, :kl]
        if "R" in halves:
            return halves["R"][..., :kr]
        return gf

    def _rot_floor(self, s: dict[str, Tensor]) -> Tensor | None:
        """The rotated second moment's floor (b, 1, 1) of a group with a stream side:
        ``ROT_FLOOR^2 mean(g_row)``, the EMA of the block's mean squared gradient as the last step left it.

        A stream basis turns the frame's first moment ``M`` into ``Q_L^T M Q_R``, which carries ``M``'s
        int8 rounding noise (a step of up to 2^-7 of a scale group's largest value) into every core
        direction, the empty ones too; their second moment is ~0, and Adam divided that noise by
        ``eps`` into full-size steps outside the span of the gradients (``bench.lowrank_toy``). A
        dense side keeps ``M`` in its own eigenbasis, where an empty direction's codes are zero:
        no floor there (``None``)."""
        if not any(side.mode == "stream" for side in self.sides):
            return None
        return (kernels.reference.ROT_FLOOR**2 * s["g_row"].mean(-1))[:, None, None]

    def _complement_factors(
        self,
        u_rot: Tensor,
        g_rot: Tensor,
        m_rot: Tensor,
        q32: Bases32,
        ginv: Sequence[Tensor | None],
        stored: tuple[Tensor | None, Tensor | None],
    ) -> dict[str, tuple[Tensor, Tensor]]:
        """``Q_L C Q_R^T`` for the three cores as ``X Y^T`` (``X`` (b, m, k), ``Y`` (b, n, k)): the update
        ``U'``, and the projections of ``G_F`` and ``M`` onto the basis, ``C = (Q_L^T Q_L)^-1 Q_L^T G_F
        Q_R (Q_R^T Q_R)^-1`` from their rotated ``Q_L^T G_F Q_R``.

        The projection uses the exact projector ``Q (Q^T Q)^-1 Q^T``: bases are stored in bf16, so
        ``Q^T Q = I + E`` with ``|E| ~ 2^-9``, and ``G - Q Q^T G Q_R Q_R^T`` would leave a residual
        of that size that the Adam normalisation blows up to a full-size step. ``(I + E)^-1 ~ I - E
        + E^2`` costs two k x k products. The full-size products are never formed here: the kernels
        build them tile by tile (:mod:`.kernels.lowrank`). A basis that is a factor as it stands
        (``Y = Q_R``, or ``X = Q_L`` of a one-sided block) is passed to the complement as stored
        (``stored``: the bases' first ``K`` columns in their stored dtype): it reads a bf16 basis at half
        the bytes, once for both of its products.

        With two stream sides the three left factors come from one product ``Q_L [C_u C_g C_m]`` of the
        cores side by side, ``(b, m, 3 kr)``; each factor is a column slice of it, which the kernels read
        in place (a product of ``Q_L`` with the three stacked cores would broadcast ``Q_L`` into three
        copies first)."""
        qls, qrs = stored
        core = torch.stack([g_rot, m_rot])
        if qls is not None:  # (a stream side's Gram inverse is always there: _gram_inverses, cached)
            core = ginv[0] @ core
        if qrs is not None:
            core = core @ ginv[1]
        if qls is not None and qrs is not None:
            b, kl, kr = u_rot.shape
            wide = torch.stack([u_rot, core[0], core[1]], dim=2).reshape(b, kl, 3 * kr)  # [C_u C_g C_m]
            low = (self.u_dtype, self.p_dtype) == (torch.bfloat16, torch.bfloat16)
            if low and self.bf16_left_products and qls.dtype == torch.bfloat16:
                # Q_L C as one bf16 product of the stored basis and the cores rounded to bf16, written in
                # bf16: the factor is rounded to bf16 anyway; this rounds C first (2^-9 of each entry, where
                # TF32 kept 2^-11) instead of an fp32 TF32 product, its fp32 result and a conversion
                x = qls @ wide.to(torch.bfloat16)
            else:
                x = q32[0] @ wide
            xs, ys = x.unflatten(-1, (3, kr)).movedim(-2, 0), (qrs,) * 3
        else:
            cores = torch.cat([u_rot.unsqueeze(0), core])  # (3, b, kl, kr)
            xs, ys = ((qls,) * 3, cores.mT) if qls is not None else (cores, (qrs,) * 3)
        # each coefficient factor meets the stored basis in the basis' dtype (:attr:`u_dtype`, :attr:`p_dtype`):
        # against a bf16 basis each product is one exact bf16 product, read as stored, instead of two (an
        # fp32 factor split in bf16 terms, lowrank.dot_chunk) or a TF32 one, at half the bytes (the
        # complement 2.72 -> 2.39 ms a step at 405M, session_yd). The rounding, 2^-9 of a factor's entries,
        # reaches a product as about 2^-9 of its size: of U's low-rank part, the size of the bf16 basis'
        # own rounding; of G's projection, that of the bf16 gradient's own; of M's, under the int8 code's
        # own error in M (2^-9 to 2^-7 of its group's largest value), and the complement M - X_m Y^T, which
        # the rounding leaks into, holds nearly all of that code noise already.
        out = {}
        for j, (key, dt) in enumerate((("u", self.u_dtype), ("g", self.p_dtype), ("m", self.p_dtype))):
            x, y = xs[j], ys[j]
            out[key] = (x, y.to(dt)) if qls is not None and qrs is None else (x.to(dt), y)
        return out

    def _with_complement(
        self,
        s: dict[str, Tensor],
        m: Tensor,
        factors: dict[str, tuple[Tensor, Tensor]],
        hp: Hyper,
        bc1: Tensor | float,
        bc2: Tensor | float,
        mask: Tensor,
        stats: tuple[Tensor, Tensor] | None,
        target: tuple[Tensor, Tensor | None] | None = None,
        hyper: StepScalars | None = None,
    ) -> Tensor | None:
        """``Q_L U' Q_R^T`` plus Adam on what a truncated basis misses, with a factored second moment.
        Given ``target = (weights, correction bits)`` it is applied to them (lr, weight decay of
        ``hp``) and ``None`` returned.

        ``s["res_row"]``/``s["res_col"]``: this step's EMAs of the row/column mean squares of the
        gradient's residual ``G_F - Q_L C_G Q_R^T``, and ``stats`` the complement's column factor
        and floor derived from them (both from :func:`kernels.residual_stats`); ``factors``: see
        :meth:`_complement_factors`. ``mask`` (b,) selects the truncated blocks: the others'
        complement is empty and their update untouched (so a block's math never depends on its
        group). The residual second moment is floored at ``RES_FLOOR^2`` of the block's mean squared
        gradient, so rounding noise in an empty complement (a rank-deficient gradient whose range
        the basis holds) stays small (:data:`kernels.reference.RES_FLOOR`).
        """
        # U = X_u Y_u^T + mask (M - X_m Y_m^T)/bc1 / max(sqrt(r_i c_j / mean(r) / bc2), sqrt(floor / bc2) + eps), one
        # pass over M (the floor is kernels.reference.RES_FLOOR^2 times the mean squared gradient)
        (xu, yu), (xm, ym) = factors["u"], factors["m"]
        apply = {} if target is None else dict(w=target[0], rho=target[1], lr=hp.lr, wd=hp.weight_decay)
        return kernels.complement_update(
            m, xu, yu, xm, ym, s["res_row"], s["res_col"], s["g_row"], mask, bc1, bc2, hp.eps,
            stats=stats, hyper=hyper, **apply,
        )  # fmt: skip

    def _graft(
        self, s: dict[str, Tensor], u: Tensor, m: Tensor, hp: Hyper, bc1: Tensor | float, bc2: Tensor | float
    ) -> Tensor:
        """Per-block step size from a simpler optimizer, direction from SOAP.

        In the eigenbasis a low-rank gradient lands on few coordinates, so the raw SOAP update can
        have a far smaller RMS than AdamW's (up to ``sqrt(min(m, n))`` times, as for Muon's
        orthogonalised update): on full-batch or nearly deterministic problems AdamW's lr then
        under-steps. On stochastic LM gradients the raw step did best (tiny GPT, BENCHMARKS.md).

        * ``"norm"``: scale ``U`` to the norm of Adam with one second moment per block,
          ``||M/bc1|| / sqrt(mean(G^2)/bc2)`` — rotation invariant, so it needs no state outside
          the block's frame;
        * ``"rms"``: scale ``U`` to a fixed RMS ``graft_rms`` (Muon's ``match_rms_adamw`` uses 0.2);
        * ``"none"``: plain SOAP.
        """
        mode = self.cfg.graft
        if mode == "none":
            return u
        unorm = torch.linalg.vector_norm(u, dim=(-2, -1)).clamp_min(1e-30)
        if mode == "rms":
            target = self.cfg.graft_rms * (self.m_dim * self.n_dim) ** 0.5
        else:
            gms = s["g_row"].mean(-1).clamp_min(1e-30)  # EMA of the mean squared gradient (frame-invariant)
            mnorm = torch.linalg.vector_norm(m, dim=(-2, -1), dtype=torch.float32)
            target = mnorm * (_flat(bc2) / gms).sqrt() / _flat(bc1)
        return u.mul_((target / unorm)[:, None, None])

    def _update_factors(
        self,
        s: dict[str, Tensor],
        idx: Sequence[int],
        g: Tensor,
        hp: Hyper,
        sides: Sequence[Side],
        halves: dict[str, Tensor] | None = None,
        sumsq: Tensor | None = None,
        seeds: dict[str, Tensor] | None = None,
        hyper: StepScalars | None = None,
    ) -> None:
        """``g`` is the gradient in the block's frame (``G_F``; ``G`` itself before the first basis).

        Dense: ``F^T L F <- bs F^T L F + (1-bs) G_F G_F^T`` (the factor in its own eigenbasis frame;
        ``F_R`` orthogonal drops out); stream: ``P <- bs P + (1-bs) G_F G_F^T Qh`` and the trace
        ``tr(L) <- bs tr(L) + (1-bs) ||G_F||^2`` (``sumsq``, when the caller has it already). ``seeds``:
        the int8 factors' dither seeds per dense side, when they come from the device; ``hyper``: the
        step's row, whose gate shut keeps every factor, sketch and trace as it was."""
        beta = hp.shampoo_beta
        halves = halves or {}
        for side in sides:
            n = side.name
            if side.mode == "dense":
                a = g if n == "L" else g.mT
                outer = a @ a.mT
                if self.cfg.q("factors"):
                    seed = seeds[n] if seeds is not None else self._seeds(idx, n)
                    kernels.factor_ema_corr_(s[f"{n}.fac.codes"], s[f"{n}.fac.diag"], outer, beta, seed, hyper)
                else:
                    _ema_(s[f"{n}.fac"], outer, beta, hyper)
            elif side.mode == "stream":
                half = halves[n]  # Qh^T G (rows) or G Qh (columns)
                sketch = s[f"{n}.sketch"]
                if g.dtype == torch.bfloat16 and sketch.dtype == torch.bfloat16:
                    # G G^T Qh from bf16 operands, the EMA in the product's fp32 epilogue, rounded once
                    # to the stored bf16: one launch, no full-size temporary
                    half = half.to(torch.bfloat16)
                    a, b = (g, half.mT) if n == "L" else (g.mT, half)
                    if hyper is None:
                        sketch.baddbmm_(a, b, beta=beta, alpha=1 - beta)
                    else:  # (out of place, the same product, kept where the gate is open)
                        gated_(sketch, torch.baddbmm(sketch, a, b, beta=beta, alpha=1 - beta), hyper)
                else:
                    fresh = matmul_f32(g, half.mT) if n == "L" else matmul_f32(g.mT, half)
                    gated_(sketch, sketch.float().mul_(beta).add_(fresh, alpha=1 - beta), hyper)
                if sumsq is None:
                    sumsq = kernels.residual_sumsq(g)[0].sum(-1)
                _ema_(s[f"{n}.trace"], sumsq, beta, hyper)

    def _first_step(self, idx: Sequence[int], hp: Hyper) -> None:
        """SOAP's step 1: accumulate the factors and build the first bases; no parameter update."""
        g = self.gather_grads(idx)
        s, whole = self.select(idx)
        # stream sides: the first sketch is P = L Qh0 for a random orthonormal Qh0
        probes = {}
        for side in self.sides:
            if side.mode == "stream":
                width = side.rank_cap(hp.rank_max) + side.p
                seeds = [block_seed(self.specs[i].index, side.name, 0) for i in idx]
                qh0 = torch.stack([precond.first_probe_stream(side.d, width, sd, g.device) for sd in seeds])
                a = g if side.name == "L" else g.mT
                probes[side.name] = (qh0, (1 - hp.shampoo_beta) * (a @ (a.mT @ qh0)))
                s[f"{side.name}.trace"].mul_(hp.shampoo_beta).add_(a.square().sum((-2, -1)), alpha=1 - hp.shampoo_beta)
        self._update_factors(s, idx, g, hp, [side for side in self.sides if side.mode == "dense"])
        self.put_back(idx, s, whole)
        streamed = {}  # side -> (batched first bases, per-block failure)
        for side in self.sides:
            if side.mode == "stream":
                qh0, p0 = probes[side.name]
                streamed[side.name] = precond.refresh_stream(
                    qh0, p0, block_rows(self.t[f"{side.name}.trace"], idx), [0] * len(idx), hp.spectral_mass,
                    hp.rank_min, side.rank_cap(hp.rank_max), side.p,
                    [block_seed(self.specs[i].index, side.name, 1) for i in idx],
                )  # fmt: skip
        for j, i in enumerate(idx):
            results: list[precond.Basis | None] = []
            for side in self.sides:
                basis = None
                try:
                    if side.mode == "dense":
                        fac = {key: self.t[key][i] for key in self._factor_keys(side)}
                        basis = precond.first_basis_dense(self._decode_factor(side, fac))
                    elif side.mode == "stream":
                        batch, why = streamed[side.name]
                        if why[j] is not None:
                            raise precond.BasisError(why[j])
                        basis = batch.rows([j])
                except precond.BasisError as e:  # keep the identity (counted)
                    basis = self.identity_basis(side, hp, i)
                    self.failure_log.append(f"first basis, {e.reason}")
                results.append(basis)
            self.apply_bases(Refresh([i], results, [-1], None))
            self.ready[i] = True

    # -- refresh --------------------------------------------------------------------------
    # -- state_dict ----------------------------------------------------------------------
    def block_state(self, i: int) -> dict[str, Tensor]:
        """Block ``i``'s state, trimmed to its own ranks, as fresh tensors (exact, no re-quantising)."""
        out: dict[str, Tensor] = {"step": torch.tensor(self.steps[i]), "ready": torch.tensor(self.ready[i])}
        rl, rr = (s.ranks[i] for s in self.sides)
        for k, v in self.t.items():
            x = v[i]
            if k.startswith("v."):
                x = x[:rl, : round32(rr)] if k == "v.codes" else x[:rl, : quant.n_groups(rr)]
            elif k == "v":
                x = x[:rl, :rr]
            elif k.endswith((".q", ".eig")):
                side = self.sides[0 if k[0] == "L" else 1]
                x = x[..., : side.ranks[i]]
            elif k.endswith((".qh", ".sketch")):
                side = self.sides[0 if k[0] == "L" else 1]
                x = torch.cat([x[..., : side.ranks[i]], x[..., side.K :]], dim=-1)
            out[k] = x.clone()
        for side in self.sides:
            out[f"{side.name}.rank"] = torch.tensor(side.ranks[i])
            out[f"{side.name}.width"] = torch.tensor(side.K)  # the group's allocated width: same shapes on resume
        return out

    def load_block_state(self, i: int, st: dict[str, Tensor]) -> None:
        for side in self.sides:
            k = int(st[f"{side.name}.rank"])
            width = max(side.width_for(k), int(st.get(f"{side.name}.width", 0)))
            if width > side.K:
                self._grow(side, width)
        for key, v in self.t.items():
            x = st[key].to(v.device)
            tgt = v[i]
            if key.startswith("v") or key.endswith((".q", ".eig")):
                tgt.zero_()
                tgt[tuple(slice(0, s) for s in x.shape)].copy_(x)
            elif key.endswith((".qh", ".sketch")):
                side = self.sides[0 if key[0] == "L" else 1]
                k = int(st[f"{side.name}.rank"])
                tgt.zero_()
                tgt[..., :k].copy_(x[..., :k])
                tgt[..., side.K :].copy_(x[..., k:])
            else:
                tgt.copy_(x)
        for side in self.sides:
            side.ranks[i] = int(st[f"{side.name}.rank"])
        self._basis_changed(i)
        self.steps[i] = int(st["step"])
        self.ready[i] = bool(st["ready"])


_BMM_OUT_DTYPE: bool | None = None
"""Whether this torch has ``torch.bmm(..., out_dtype=)`` (added in 2.8; ``None``: not tried yet)."""


def matmul_f32(a: Tensor, b: Tensor) -> Tensor:
    """fp32 ``a @ b`` of two fp32 or two bf16 stacks ``(b, ., .)``. bf16 operands are multiplied
    exactly (8-bit significands) and summed in fp32: cuBLAS's bf16 product with an fp32 result on
    CUDA, the fp32 product of their exact fp32 values elsewhere (and on a torch older than 2.8)."""
    global _BMM_OUT_DTYPE
    if a.dtype == torch.bfloat16 and b.dtype == torch.bfloat16:
        if a.is_cuda and _BMM_OUT_DTYPE is not False:
            try:
                out = torch.bmm(a, b, out_dtype=torch.float32)
            except TypeError:  # no out_dtype keyword in this torch
                _BMM_OUT_DTYPE = False
            else:
                _BMM_OUT_DTYPE = True
                return out
        return a.float() @ b.float()
    return a @ b


def _factored(row: Tensor, col: Tensor) -> Tensor:
    """Adafactor's rank-1 second moment ``r_i c_j / mean(r)`` from row/column mean squares."""
    return row.unsqueeze(-1) * col.unsqueeze(-2) / row.mean(-1).clamp_min(1e-30)[:, None, None]


def _flat(bc: Tensor | float) -> Tensor | float:
    """(b, 1, 1) bias correction -> (b,)."""
    return bc.reshape(-1) if isinstance(bc, Tensor) else bc


def _gram_inverse(q: Tensor) -> Tensor:
    """``(Q^T Q)^-1`` for a nearly orthonormal ``Q`` (zero columns allowed): ``I - E + E^2``."""
    gram = q.mT @ q
    eye = torch.diag_embed((gram.diagonal(dim1=-2, dim2=-1) > 0.5).to(gram.dtype))
    e = gram - eye
    return eye - e + e @ e


class Bases32:
    """The fp32 truncated bases ``Q`` (b, d, K) of a step's sides (``None``: not a stream side), each taken
    to fp32 from its stored copy on first use and kept for the step. A step with bf16 gradients and
    bases multiplies the stored bf16 in its full-size products and needs one side in fp32 at most (the
    small TF32 products of an fp32 intermediate, :meth:`KronGroup._core`); an fp32 step passes the
    fp32 bases it made already (``made``)."""

    def __init__(self, stored: Sequence[Tensor | None], made: Sequence[Tensor | None] | None = None):
        self._stored = list(stored)
        self._f32: list[Tensor | None] = list(made) if made is not None else [None] * len(self._stored)

    def __getitem__(self, side: int) -> Tensor | None:
        q = self._f32[side]
        if q is None and self._stored[side] is not None:
            q = self._f32[side] = self._stored[side].float()
        return q


def make_group(specs, params, cfg, device):
    cls = KronGroup if specs[0].kind == "kron" else AdamGroup
    return cls(specs, params, cfg, device)
