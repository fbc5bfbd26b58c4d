"""Eigenbasis refreshes: computed by the block's owner off the critical path, swapped in at a step boundary.

A block reports a refresh due at the end of its step ``t`` (after its factors took ``G_t``).
The scheduler snapshots what the refresh needs right then and

* ``lag == 0``: computes and swaps the new basis in immediately (synchronous; exactly SOAP);
* ``lag >= 1``: computes it on a worker (a thread; on CUDA it runs on a side stream) and swaps
  it in at the start of step ``t + lag``. With ``lag == 1`` the swap happens before the first
  use of the basis, so the math is *identical* to the synchronous refresh while the work
  overlaps the next forward/backward. ``lag = k`` lets ``k - 1`` steps run on the old basis.

Staleness is bounded: a refresh not finished at its swap step is waited for, and the wait is
counted (``counters['refresh_waits']``). Because blocks refresh on staggered phases (see
``shard/plan.py``), each step submits only a share of a rank's refreshes.

``wait=False`` trades that determinism for a step that never waits: a refresh not ready at its
swap step stays pending and is swapped in at the first step boundary after its result is ready
(``counters['refresh_late']`` counts the steps it missed; the swap recomputes the state it
carries for the blocks' current steps, as for a restored refresh), and a block whose refresh is
still pending is left out of the next submission (``counters['refreshes_deferred']``), so the
backlog cannot grow: each block's refresh interval stretches to what the worker can do.

``async_refresh=False`` keeps the lag semantics but computes on the calling thread: the result
is the same as the async one (used by the tests to prove it).
"""

from __future__ import annotations

import concurrent.futures as cf
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor

from ..config import Hyper
from ..groups import Refresh
from ..precond import Basis


@dataclass
class Pending:
    due: int  # optimizer step at whose start the result is swapped in
    group: Any
    idx: list[int]  # block positions inside their group (one batch)
    future: cf.Future | None = None
    result: list[Refresh] | None = None  # one batch, or more where some blocks failed
    batch: int | None = None  # restored: the global index of the first block of its batch
    ready_event: Any = None  # CUDA: the snapshot is written (main stream)
    done_event: Any = None  # CUDA: the result is written (side stream)


class RefreshScheduler:
    """Runs the refreshes that the groups report due, synchronously or on a worker."""

    def __init__(self, opt: Any, lag: int, async_refresh: bool = True, wait: bool = True) -> None:
        self.opt = opt
        self.lag = lag
        self.async_refresh = async_refresh and lag > 0
        self.wait = wait
        self.pending: list[Pending] = []
        self._pool: cf.ThreadPoolExecutor | None = None
        self._stream: Any = None

    # ---------------------------------------------------------------------------- submit
    def submit(self, grp: Any, idx: list[int], hp: Hyper, step: int) -> None:
        """Refresh the blocks ``idx`` of ``grp`` (due together: computed as one batch)."""
        if not self.wait:
            busy = {i for item in self.pending if item.group is grp for i in item.idx}
            kept = [i for i in idx if i not in busy]
            self.opt.counters["refreshes_deferred"] += len(idx) - len(kept)
            if not kept:
                return
            idx = kept
        inputs = grp.refresh_inputs(idx)
        if self.lag == 0:
            self._apply(grp, grp.compute_refresh(inputs, hp))
            return
        item = Pending(due=step + self.lag, group=grp, idx=list(idx))
        if not self.async_refresh:
            item.result = grp.compute_refresh(inputs, hp)
        else:
            if grp.device.type == "cuda":
                item.ready_event = torch.cuda.Event()
                item.ready_event.record(torch.cuda.current_stream(grp.device))
            item.future = self._executor().submit(self._compute, grp, inputs, hp, item)
        self.pending.append(item)

    def _executor(self) -> cf.ThreadPoolExecutor:
        if self._pool is None:
            self._pool = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="scao-refresh")
        return self._pool

    def _compute(self, grp: Any, inputs: dict, hp: Hyper, item: Pending) -> list[Refresh]:
        device = grp.device
        if device.type != "cuda":
            return grp.compute_refresh(inputs, hp)
        if self._stream is None:
            self._stream = torch.cuda.Stream(device=device)
        with torch.cuda.device(device), torch.cuda.stream(self._stream):
            self._stream.wait_event(item.ready_event)
            for t in _tensors(inputs):
                t.record_stream(self._stream)
            out = grp.compute_refresh(inputs, hp)
            item.done_event = torch.cuda.Event()
            item.done_event.record(self._stream)
        return out

    # ------------------------------------------------------------------------------ swap
    def step_boundary(self, step: int) -> None:
        """Swap in every refresh whose step has come (waiting, and counting, if unfinished; with
        ``wait=False`` an unfinished one stays pending and is counted late)."""
        if not self.pending:
            return
        keep = []
        for item in self.pending:
            if item.due <= step and (self.wait or self._ready(item)):
                self._finish(item)
            else:
                if item.due <= step:
                    self.opt.counters["refresh_late"] += 1
                keep.append(item)
        self.pending = keep

    @staticmethod
    def _ready(item: Pending) -> bool:
        """Is the result there without waiting: computed on the host and, on CUDA, on the device?"""
        if item.result is not None or item.future is None:
            return True
        if not item.future.done():
            return False
        return item.done_event is None or item.done_event.query()

    def _result(self, item: Pending) -> list[Refresh]:
        if item.result is None:
            assert item.future is not None
            if not item.future.done():
                self.opt.counters["refresh_waits"] += 1
            item.result = item.future.result()
            item.future = None
            if item.done_event is not None and item.group.device.type == "cuda":
                torch.cuda.current_stream(item.group.device).wait_event(item.done_event)
                for t in _tensors(item.result):
                    t.record_stream(torch.cuda.current_stream(item.group.device))
        return item.result

    def _finish(self, item: Pending) -> None:
        self._apply(item.group, self._result(item))

    def _apply(self, grp: Any, refreshes: list[Refresh]) -> None:
        for refresh in refreshes:
            for reason in refresh.failures:
                self.opt.count_basis_failure(reason)
            self.opt.counters["refreshes"] += len(refresh.idx)
            grp.apply_bases(refresh)

    def drain(self) -> None:
        """Finish the computations in flight (results stay pending until their step)."""
        for item in self.pending:
            self._result(item)

    # ------------------------------------------------------------------------- state
    def export(self) -> dict[int, dict[str, Any]]:
        """Pending results by global block index, as tensors (so a checkpoint resumes exactly)."""
        self.drain()
        out: dict[int, dict[str, Any]] = {}
        for item in self.pending:
            grp = item.group
            for refresh in self._result(item):
                first = grp.specs[refresh.idx[0]].index  # restored batches are rebuilt as they ran
                for j, i in enumerate(refresh.idx):
                    entry: dict[str, Any] = {"due": torch.tensor(item.due), "batch": torch.tensor(first)}
                    for side, basis in zip(grp.sides, refresh.bases):
                        if basis is not None:
                            entry[side.name] = _block_fields(basis, j, side.ranks[i])
                    out[grp.specs[i].index] = entry
        return out

    def restore(self, grp: Any, i: int, entry: dict[str, Any]) -> None:
        """A pending refresh from a checkpoint: its bases; the state they imply is recomputed at the swap.

        Blocks restored in order that were one batch (same group, due step and ``batch``) become one
        batch again, so the swap's products run with the shapes they had (bit-exact resumes on GPUs,
        where a batched product's rounding may depend on the batch)."""
        bases = []
        for side in grp.sides:
            got = {k: v.unsqueeze(0) for k, v in entry.get(side.name, {}).items()}
            bases.append(Basis(ranks=[got["q"].shape[-1]], **got) if got else None)
        due, key = int(entry["due"]), int(entry["batch"]) if "batch" in entry else None
        for item in self.pending:
            if key is not None and item.group is grp and item.due == due and item.batch == key and item.result:
                old = item.result[0]
                merged = [None if b is None else Basis.cat([b, n]) for b, n in zip(old.bases, bases)]
                item.result[0] = Refresh([*old.idx, i], merged, [*old.steps, -1], None)
                item.idx.append(i)
                return
        result = [Refresh([i], bases, [-1], None)]
        self.pending.append(Pending(due=due, group=grp, idx=[i], result=result, batch=key))

    def pending_bytes(self) -> dict[str, int]:
        total = sum(t.numel() * t.element_size() for item in self.pending if item.result for t in _tensors(item.result))
        return {"bases": total}

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def _block_fields(basis: Basis, j: int, k_old: int) -> dict[str, Tensor]:
    """Block ``j`` of a batched basis, trimmed to its own rank (:meth:`Basis.rows`) and its overlap to
    its old rank, without the batch dim."""
    one = basis.rows([j])
    out = {f.name: t[0] for f in fields(Basis) if isinstance(t := getattr(one, f.name), Tensor)}
    if "overlap" in out:
        out["overlap"] = out["overlap"][:, :k_old]
    return {name: t.clone() for name, t in out.items()}  # compact: a checkpoint stores whole storages


def _tensors(obj: Any) -> list[Tensor]:
    """Every tensor inside a (nested) list/dict/Basis."""
    if isinstance(obj, Tensor):
        return [obj]
    if isinstance(obj, Basis):
        return [t for f in fields(Basis) if isinstance(t := getattr(obj, f.name), Tensor)]
    if isinstance(obj, Refresh):
        return _tensors(obj.bases) + _tensors(obj.prepared or {})
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _tensors(v)]
    if isinstance(obj, list | tuple):
        return [t for v in obj for t in _tensors(v)]
    return []
