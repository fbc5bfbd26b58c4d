"""Collectives between ranks: gradients to their owners, updated weights back to everyone.

Per step, with N ranks and ``P`` parameter bytes (ZeRO-1's volume, never more):

* ``reduce_grads`` — each block's gradient, summed over ranks and divided by N, lands on its
  owner: a bucketed ``reduce_scatter`` of the gradients (``(N-1)/N * P`` bytes sent per rank).
  Skipped when ``grad_sync="external"`` (DDP or DeepSpeed averaged them already).
* ``gather_params`` — every owner's updated blocks reach all ranks: a bucketed ``all_gather``
  (``(N-1)/N * P`` bytes). bf16 weights travel as bf16; their error-correction bits never
  leave the owner.

Buckets: each bucket holds, for every rank, a contiguous chunk of that rank's owned blocks
(padded to the bucket's largest chunk), so one ``reduce_scatter_tensor`` /
``all_gather_into_tensor`` moves a whole bucket. gloo has no reduce-scatter: there the
gradient bucket is all-reduced and each rank keeps its chunk (CPU tests only; twice the bytes).

With no process group, or a group of one, every call returns at once: one rank is the N=1 case.
:func:`closing_process_group` ends a launcher's group (``launch/train.py``, ``launch/ds_train.py``).
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from .. import kernels
from ..blocks import BlockSpec, block_of, write_block


@dataclass
class Bucket:
    """One collective's worth of blocks: ``slots[r]`` = [(block, offset, numel)] in rank r's chunk."""

    dtype: torch.dtype
    device: torch.device
    chunk: int = 0
    slots: list[list[tuple[int, int, int]]] = field(default_factory=list)


def build_buckets(
    specs: Sequence[BlockSpec],
    owner: Sequence[int],
    params: Sequence[Tensor],
    world_size: int,
    bucket_numel: int,
) -> list[Bucket]:
    """Group blocks (by dtype and device) into buckets of about ``bucket_numel`` elements."""
    by_kind: dict[tuple[torch.dtype, torch.device], list[list[int]]] = {}
    for s in specs:
        p = params[s.param]
        queues = by_kind.setdefault((p.dtype, p.device), [[] for _ in range(world_size)])
        queues[owner[s.index]].append(s.index)
    buckets: list[Bucket] = []
    per_rank = max(1, bucket_numel // world_size)
    for (dtype, device), queues in by_kind.items():
        heads = [0] * world_size
        while any(heads[r] < len(queues[r]) for r in range(world_size)):
            b = Bucket(dtype, device, slots=[[] for _ in range(world_size)])
            for r in range(world_size):
                used = 0
                while heads[r] < len(queues[r]) and (used == 0 or used + specs[queues[r][heads[r]]].numel <= per_rank):
                    blk = queues[r][heads[r]]
                    b.slots[r].append((blk, used, specs[blk].numel))
                    used += specs[blk].numel
                    heads[r] += 1
                b.chunk = max(b.chunk, used)
            buckets.append(b)
    return buckets


def finite_flag(grads: Sequence[Tensor]) -> Tensor | None:
    """Whether every gradient is all finite, as a device bool (``None`` without gradients): launched,
    not waited for (:func:`scao_dist.kernels.finite_gather` with nothing to copy: a launch or two for all)."""
    return kernels.finite_gather(grads, ())


class FiniteCheck:
    """A step's NaN/inf check: the device flag at once, the host's answer only when it asks.

    ``finite`` is a device bool the step's captured replays can be gated on (``GroupGraphs.arm``), so
    on one rank the host need not wait for it before launching them; :meth:`bad_ranks` reads it
    (and, when sharded, agrees on it over ranks with one tiny all-reduce). On one CUDA rank the flag
    is copied at once to pinned host memory, behind only the check itself: reading it later waits
    for the check, not for the work queued after it (the replays, the next forward)."""

    def __init__(self, comm: Comm, finite: Tensor | None) -> None:
        self.comm, self.finite = comm, finite
        self._bad: list[int] | None = None
        self._copy: tuple[Tensor, Any] | None = None
        if finite is not None and finite.is_cuda and not comm.sharded:
            host, done = self._copy = comm._host_flag()
            host.copy_(finite, non_blocking=True)
            done.record()

    @property
    def resolved(self) -> bool:
        """Has the host read the flag already?"""
        return self._bad is not None

    def bad_ranks(self) -> list[int]:
        """The ranks holding a NaN/inf gradient ([] when all finite); waits for the check once."""
        if self._bad is None:
            bad = False
            if self._copy is not None:
                host, done = self._copy
                done.synchronize()
                bad = not bool(host)
            elif self.finite is not None:
                bad = not bool(self.finite)
            flags = [0.0] * self.comm.world_size
            flags[self.comm.rank] = 1.0 if bad else 0.0
            self._bad = [r for r, f in enumerate(self.comm.all_sum(flags)) if f > 0]
        return self._bad

    def ok(self) -> bool:
        """All gradients finite on every rank (waits for the check once)."""
        return not self.bad_ranks()


class Comm:
    """The optimizer's view of the process group (a no-op at world size 1)."""

    def __init__(
        self,
        process_group: Any = None,
        grad_sync: str = "scao",
        timeout_s: float | None = None,
        grad_comm_dtype: torch.dtype | None = None,
    ) -> None:
        if grad_sync not in ("scao", "external"):
            raise ValueError(
                f"grad_sync must be 'scao' (SCAO averages gradients itself: plain model, no DDP wrapper) "
                f"or 'external' (DDP/DeepSpeed already averaged them), got {grad_sync!r}"
            )
        if process_group is None and dist.is_available() and dist.is_initialized():
            process_group = dist.group.WORLD
        self.group = process_group
        self.world_size = dist.get_world_size(process_group) if process_group is not None else 1
        self.rank = dist.get_rank(process_group) if process_group is not None else 0
        self.grad_sync = grad_sync
        self.grad_comm_dtype = grad_comm_dtype  # None: gradients travel in their parameters' dtype
        self.timeout = timedelta(seconds=timeout_s) if timeout_s else None
        self.backend = dist.get_backend(process_group) if process_group is not None else None
        self.buckets: list[Bucket] = []
        self.in_flight: dict[int, tuple[Tensor, Tensor, Any]] = {}  # bucket -> (flat, out, work)
        self.bytes_sent = 0  # bytes this rank sent in the last completed step (reported, not used)
        self._sending = 0  # bytes of the step under way (buckets may start during the backward)
        self._pending: FiniteCheck | None = None  # the last check (at most one is unread by the host)
        self._flag_copy: tuple[Tensor, Any] | None = None

    @property
    def sharded(self) -> bool:
        return self.world_size > 1

    # ------------------------------------------------------------------- agreement checks
    def _device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")

    def all_max(self, values: Sequence[float], dtype: torch.dtype = torch.float64) -> list[float]:
        """Element-wise max of a few numbers over ranks (one small all-reduce)."""
        t = torch.tensor(list(values), dtype=dtype, device=self._device())
        if self.sharded:
            dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.group)
        return t.tolist()

    def all_sum(self, values: Sequence[float]) -> list[float]:
        if not self.sharded:  # (no round trip through the device)
            return [float(v) for v in values]
        t = torch.tensor(list(values), dtype=torch.float64, device=self._device())
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.group)
        return t.tolist()

    def check_same_plan(self, fingerprint: int) -> None:
        """Every rank must split the same parameters the same way; else a clear error now."""
        if not self.sharded:
            return
        lo, hi = self.all_max([fingerprint, -fingerprint], dtype=torch.int64)
        if lo != fingerprint or -hi != fingerprint:
            raise RuntimeError(
                f"SCAO: rank {self.rank} built a different block plan than another rank (parameter "
                "shapes, order, dtypes or requires_grad differ). Every rank must construct the same "
                "model and pass its parameters to SCAO in the same order."
            )

    def check_in_sync(self, params: Sequence[Tensor]) -> None:
        """Raise if the ranks' weights have drifted apart (a silent desync made loud)."""
        if not self.sharded or not params:
            return
        local = float(sum(float(p.detach().float().sum()) for p in params))
        hi, neg_lo = self.all_max([local, -local])
        if hi != -neg_lo:
            raise RuntimeError(
                f"SCAO: the weights differ between ranks (checksum on rank {self.rank}: {local!r}, "
                f"max over ranks {hi!r}, min {-neg_lo!r}). Something updated parameters outside "
                "optimizer.step() on some ranks, or ranks ran different steps."
            )

    def nonfinite_ranks(self, grads: Sequence[Tensor]) -> list[int]:
        """Ranks holding a NaN/inf gradient (one tiny all-reduce when sharded); [] when all finite."""
        return self.check_finite(grads).bad_ranks()

    def check_finite(
        self, grads: Sequence[Tensor], flag_of: Callable[[Sequence[Tensor]], Tensor | None] | None = None
    ) -> FiniteCheck:
        """Launch the non-finite check of ``grads`` without waiting for it (see :class:`FiniteCheck`);
        ``flag_of`` computes its device flag instead of :func:`finite_flag` (the same one, replayed from
        a CUDA graph: ``GroupGraphs.finite_flag``)."""
        finite = (flag_of or finite_flag)(grads)  # (launched first: the host's work below overlaps it)
        if self._pending is not None and not self._pending.resolved:
            self._pending.bad_ranks()  # (its flag's host copy is about to be reused)
        self._pending = FiniteCheck(self, finite)
        return self._pending

    def _host_flag(self) -> tuple[Tensor, Any]:
        """The pinned host bool and event a one-rank check copies its flag through (made once)."""
        if self._flag_copy is None:
            self._flag_copy = (torch.ones((), dtype=torch.bool, pin_memory=True), torch.cuda.Event())
        return self._flag_copy

    # --------------------------------------------------------------------------- traffic
    def launch_bucket(self, opt: Any, k: int) -> None:
        """Start the (async) reduce-scatter of bucket ``k`` from the ranks' current local grads."""
        b = self.buckets[k]
        params = opt._all_params()
        dtype = self.grad_comm_dtype or b.dtype
        flat = torch.zeros(b.chunk * self.world_size, dtype=dtype, device=b.device)
        for r, slots in enumerate(b.slots):
            base = r * b.chunk
            for blk, off, n in slots:
                s = opt.specs[blk]
                g = params[s.param].grad
                if g is not None:
                    flat[base + off : base + off + n].view(s.shape).copy_(_block(g, s))
        flat.div_(self.world_size)
        if self.backend == "gloo":  # no reduce-scatter on gloo: all-reduce, keep this rank's chunk
            out = flat[self.rank * b.chunk : (self.rank + 1) * b.chunk]
            work = dist.all_reduce(flat, group=self.group, async_op=True)
        else:
            out = torch.empty(b.chunk, dtype=dtype, device=b.device)
            work = dist.reduce_scatter_tensor(out, flat, group=self.group, async_op=True)
        self.in_flight[k] = (flat, out, work)
        self._sending += flat.numel() * flat.element_size() * (self.world_size - 1) // self.world_size

    def reduce_grads(self, opt: Any, with_grad: set[int]) -> None:
        """Average each owned block's gradient over ranks, in place in ``p.grad`` on the owner.

        Buckets already launched from the backward hooks (``overlap_comm``) are only waited for.
        """
        if not self.sharded or self.grad_sync == "external":
            return
        params = opt._all_params()
        for k in range(len(self.buckets)):
            if k not in self.in_flight:
                self.launch_bucket(opt, k)
        for k, b in enumerate(self.buckets):
            _flat, out, work = self.in_flight.pop(k)
            work.wait()
            for blk, off, n in b.slots[self.rank]:
                s = opt.specs[blk]
                if s.param in with_grad:
                    write_block(params[s.param].grad, s, out[off : off + n].view(s.shape))

    def end_step(self) -> None:
        """Close the traffic count of the step just finished."""
        self.bytes_sent, self._sending = self._sending, 0

    def discard_in_flight(self) -> None:
        """Wait for and drop launched reductions (a skipped step must not leak them into the next)."""
        for _flat, _out, work in self.in_flight.values():
            work.wait()
        self.in_flight.clear()

    def gather_params(self, opt: Any) -> None:
        """Send every owner's blocks to all ranks (the weights themselves, not updates)."""
        if not self.sharded:
            return
        params = opt._all_params()
        works = []
        for b in self.buckets:
            mine = torch.zeros(b.chunk, dtype=b.dtype, device=b.device)
            for blk, off, n in b.slots[self.rank]:
                s = opt.specs[blk]
                mine[off : off + n].view(s.shape).copy_(_block(params[s.param], s))
            flat = torch.empty(b.chunk * self.world_size, dtype=b.dtype, device=b.device)
            if self.backend == "gloo":
                parts = list(flat.chunk(self.world_size))
                works.append((b, flat, dist.all_gather(parts, mine, group=self.group, async_op=True)))
            else:
                works.append((b, flat, dist.all_gather_into_tensor(flat, mine, group=self.group, async_op=True)))
            self._sending += mine.numel() * mine.element_size() * (self.world_size - 1)
        with torch.no_grad():
            for b, flat, work in works:
                work.wait()
                for r, slots in enumerate(b.slots):
                    if r == self.rank:
                        continue
                    for blk, off, n in slots:
                        s = opt.specs[blk]
                        base = r * b.chunk + off
                        write_block(params[s.param], s, flat[base : base + n].view(s.shape))

    def gather_objects(self, obj: Any) -> list[Any]:
        """``all_gather_object``: every rank gets every rank's ``obj``."""
        if not self.sharded:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self.group)
        return out


def _block(t: Tensor, s: BlockSpec) -> Tensor:
    return block_of(t, s)


@contextlib.contextmanager
def closing_process_group() -> Iterator[None]:
    """Run a launcher's body, then tear its process group down cleanly. After a body that returns,
    every rank drops its reference cycles (a DDP wrapper or DeepSpeed engine still holding the
    group) and meets the others at a barrier, so no rank destroys the group while another is in its
    epilogue: that made the other rank abort inside gloo ("terminate called without an active
    exception"). On any exit the group, if there is one, is destroyed."""
    try:
        yield
        if dist.is_initialized() and dist.get_world_size() > 1:
            gc.collect()
            dist.barrier()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
