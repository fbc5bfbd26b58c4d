"""Captured group steps: each group's step recorded once as a CUDA graph, then replayed.

A group step is some forty launches (products, Triton kernels, small torch ops), each costing the
host a few microseconds of Python and driver work; on the 405M GPT the host needs longer to
launch a step than the GPU needs to run it. A group whose step is the same launches on the same
tensors every time is recorded once (``torch.cuda.CUDAGraph``) and replayed with one launch.

What changes from step to step lives in fixed device buffers, filled before the replays:

* the gradients: one stacked buffer per group. ``SCAO.zero_grad`` makes the parameters' ``.grad``
  views of it (:meth:`GroupGraphs.install_grad_views`), so autograd accumulates into it; where
  that is not so (the first step, a ``model.zero_grad()``, a parameter cut into column blocks,
  dtypes that differ) the gradients are copied in (one multi-tensor copy for all groups). The
  non-finite check then reads the views' buffers instead of the views (``SCAO._grads_to_check``):
  when every gradient is such a view, the same few tensors every step, so the check is recorded too
  and replayed (:meth:`GroupGraphs.finite_flag`);
* lr and the bias corrections: one :class:`~scao_dist.kernels.scalars.StepScalars` row per group,
  all in one table written by one copy (the kernels load them: ``hyper=``);
* the dither seeds of int8 factors (dense sides): one int64 table, one copy.

Everything that decides which launches run, on which tensors and with which shapes, is the
group's *key*: the addresses and shapes of its state tensors (a refresh that widens a basis
reallocates them), which blocks have a truncated basis, the weights' buffer, the constant
hyperparameters, the matmul precision flags and the kernel backend (Triton or the torch twins).
On a new key the group runs one eager step with the device inputs (the same results as a replay;
it also compiles and loads every kernel and fills the group's caches), captures at the next step,
and replays after that. The scalars are uploaded while the GPU checks the gradients for NaN/inf
(:meth:`GroupGraphs.upload_scalars`); each group's key and the Gram inverses of bases swapped in are
computed just before its replay (:meth:`GroupGraphs.launch`), so the first replay waits for one key.

The check gates the replays on the device: :meth:`GroupGraphs.arm` writes its flag into the ``gate``
of every group's scalars row, and every kernel (and torch twin) that writes optimizer state or
weights in a group step reads that row and writes nothing when the gate is shut
(:data:`~scao_dist.kernels.scalars.FIELDS`); the group's own torch writes (stream sketches, traces)
go through :func:`~scao_dist.kernels.scalars.gated_`. So on one rank the host launches the replays
without waiting for the check and reads it at the next step (``SCAO._settle``: a skipped step is
then taken back on the host too, its step counts undone): in a training loop the backward need not
drain before the replays are queued. (In ``bench.step_profile``, where the GPU is idle when ``step()``
starts, it saved nothing: the host's Python before the first replay outlasts the check, BENCHMARKS.md
§0m.) An eager step (a new key) still waits for the check.

A group is captured when it is on a CUDA device, all its blocks step together at the same step
count and are warm (their first bases built), its moments are int8 and it does not graft
(:meth:`KronGroup.capturable`); anything else runs eagerly, in the same step, as before.

The groups are spread over ``streams`` lanes (:func:`assign_lanes`, ``SCAO(graph_streams=...)``): lane 0
replays on the caller's stream, every other lane on a stream of its own that waits for the check and the
uploads, and the caller's stream waits for all lanes before the step returns. The groups share no tensor,
so two lanes' kernels may run at once (the low-rank kernels leave most of a multiprocessor's registers and
warp slots to others). Within a lane the graphs share one memory pool (a group's temporaries are alive only
during its replay, and a lane's replays run one after the other); each lane also records its graphs and
runs its eager steps on a side stream of its own, because torch keys cuBLAS's workspace by stream and a
graph keeps the workspace it was recorded with: graphs of two lanes recorded on one stream would share a
workspace while they run at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import operator
import warnings
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from . import kernels
from .config import Hyper
from .groups import AdamGroup, DeviceInputs, KronGroup
from .kernels import scalars
from .kernels.scalars import StepScalars
from .shard.comm import FiniteCheck
from .stacked import SEED_STEP, block_seed

Group = KronGroup | AdamGroup

grad_of = operator.attrgetter("grad")
"""``p.grad`` as a function (``map(grad_of, params)``: one C call per parameter)."""


def same_objects(a: Sequence[Any], b: Sequence[Any]) -> bool:
    """Are ``a`` and ``b`` the very same objects, in order (identity, not equality)?"""
    return len(a) == len(b) and all(map(operator.is_, a, b))


NAN_HYPER = {"lr": math.nan, "weight_decay": math.nan}
"""The host lr and weight decay a captured step is given: every use must read the device row, and
a use that does not shows up as NaN weights instead of as a silently stale lr."""


ROW_STRIDE = 8
"""Values per group row of the scalars table (6 used): 32-byte rows keep every row equally aligned."""


@dataclasses.dataclass
class _Entry:
    """One group's capture: its device inputs, the key they were recorded under, the graph."""

    grads: Tensor  # (B, m, n) in the group's gradient dtype
    dev: DeviceInputs
    seed_slots: dict[str, tuple[int, int]]  # side -> rows of the seed table
    key: tuple | None = None
    graph: torch.cuda.CUDAGraph | None = None
    failed: bool = False  # a capture raised: this group steps eagerly
    keep: list[Tensor] = dataclasses.field(default_factory=list)  # tensors the graph reads, kept alive
    views: list[tuple[Tensor, Tensor]] = dataclasses.field(default_factory=list)  # (param, its rows of grads)
    gather: tuple[list[Tensor], list[tuple[Tensor, Tensor]]] = dataclasses.field(default_factory=lambda: ([], []))
    # (the .grads seen last, the check's copies from them: GroupGraphs._blocks)
    homes: dict[int, Tensor] = dataclasses.field(default_factory=dict)  # param id -> its kept .grad (no views)
    retired: list[Any] = dataclasses.field(default_factory=list)  # replaced graphs (and what they read), kept
    # alive until the next capture synchronises the device: their last replay may still be running

    def __post_init__(self) -> None:
        self.view_params = [p for p, _ in self.views]  # (the views' two sides as lists: _aliased)
        self.view_grads = [v for _, v in self.views]


class _Upload:
    """The step's device inputs (the scalars table and the dither seeds, one byte buffer on the device)
    written from the host in one copy without the host waiting for the stream: through pinned buffers
    (two, used in turn, each refilled only once its last copy is done). A copy from pageable memory
    may make the host wait until the stream reaches it (CUDA's staging), which would undo the
    overlap of the host's work with the gradient check. The host writes the values straight into the
    pinned bytes through numpy views made once (:meth:`fill`)."""

    def __init__(self, rows: int, seeds: int, device: torch.device) -> None:
        self.split = rows * ROW_STRIDE * 4  # bytes of the table (32 per row: the seeds after it 8-aligned)
        nbytes = self.split + seeds * 8
        self.dev = torch.zeros(nbytes, dtype=torch.uint8, device=device)
        pinned = self.dev.is_cuda
        self.bufs = [torch.zeros(nbytes, dtype=torch.uint8, pin_memory=pinned) for _ in range(2)]
        self.done = [torch.cuda.Event() if pinned else None for _ in range(2)]
        self.turn = 0
        self._arrays = [tuple(v.numpy() for v in self.views(b)) for b in self.bufs]
        # (destination, sources) of the copy with and without the seeds
        self._copies = {n: (self.dev[:n], [b[:n] for b in self.bufs]) for n in (self.split, nbytes)}

    def views(self, buf: Tensor) -> tuple[Tensor, Tensor]:
        """(scalars table (rows, ROW_STRIDE) fp32, seeds (n,) int64) of one of the byte buffers."""
        return buf[: self.split].view(torch.float32).view(-1, ROW_STRIDE), buf[self.split :].view(torch.int64)

    def fill(self) -> tuple[np.ndarray, np.ndarray]:
        """The table and seeds of the pinned buffer whose turn it is, to write into (once its last copy is
        done: long done, it was one step ago); :meth:`send` copies them."""
        done = self.done[self.turn]
        if done is not None:
            done.synchronize()
        return self._arrays[self.turn]

    def send(self, seeds: bool) -> None:
        """Copy the buffer :meth:`fill` gave (the table, and the seeds with ``seeds``) to the device."""
        dst, srcs = self._copies[self.dev.numel() if seeds else self.split]
        dst.copy_(srcs[self.turn], non_blocking=True)
        done = self.done[self.turn]
        if done is not None:
            done.record()
        self.turn ^= 1


def assign_lanes(sizes: dict[int, int], lanes: int) -> dict[int, int]:
    """Each group (id -> elements) to one of ``lanes`` streams: the largest first, each to the lane with the
    fewest elements so far (ties: the lowest lane). Groups on different lanes share no tensor, so their
    replays may run at once: a kernel that leaves a multiprocessor's registers or warp slots unused (the
    low-rank kernels hold 2 programs of 4 warps) lets another group's kernels fill them."""
    load = [0] * lanes
    out = {}
    for gid, n in sorted(sizes.items(), key=lambda kv: -kv[1]):
        k = load.index(min(load))
        out[gid] = k
        load[k] += n
    return out


class _Lanes:
    """One step's replays spread over :attr:`GroupGraphs.lane_streams`: lane 0 is the caller's stream; each
    other lane waits (:meth:`start`) for what the caller's stream holds when the replays begin (the check, the
    scalars' upload), runs its groups' host-launched work (replays, Gram inverses, captures, eager steps) on its
    own stream, and the caller's stream waits for every lane at the end (:meth:`join`). Each lane's graphs
    live in the lane's own memory pool, so replays on different lanes touch different temporaries."""

    def __init__(self, graphs: GroupGraphs, work: Sequence[Work]) -> None:
        self.graphs = graphs
        used = sorted({graphs.lane_of[id(w[0])] for w in work} - {0})
        self.streams = [s for s in map(graphs.lane_streams.__getitem__, used) if s is not None]
        self.main = torch.cuda.current_stream(graphs.device) if self.streams else None

    def start(self) -> None:
        for s in self.streams:
            s.wait_stream(self.main)

    def run(self, grp: Group, fn: Callable[..., bool], *args: Any) -> bool:
        """``fn(grp, *args)`` on ``grp``'s lane stream (directly on lane 0)."""
        s = self.graphs.lane_streams[self.graphs.lane_of[id(grp)]]
        if s is None:
            return fn(grp, *args)
        with torch.cuda.stream(s):
            return fn(grp, *args)

    def join(self) -> None:
        for s in self.streams:
            self.main.wait_stream(s)


Work = tuple[Group, list[int], Hyper, list[list[int]]]
"""A group's share of a step: ``(group, its blocks with gradients (all), hyperparameters, chunks)``."""


class GroupGraphs:
    """The captured steps of an optimizer's groups on one CUDA device (see the module docstring)."""

    def __init__(self, groups: Sequence[Group], device: torch.device, record: bool = True, streams: int = 1) -> None:
        """``record=False``: everything but the graphs (device inputs, keys, the eager step with the
        device inputs at every step), on any device: what the CPU tests check against eager steps.
        ``streams``: the groups' replays are spread over this many streams (:func:`assign_lanes`)."""
        if streams < 1:
            raise ValueError(f"streams must be at least 1, got {streams}")
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:  # "cuda": the current device, as the groups name it
            device = torch.device("cuda", torch.cuda.current_device())
        self.device = device
        self.record = record
        self.groups = list(groups)
        self.pos = {id(g): j for j, g in enumerate(self.groups)}
        seed_rows = 0
        self.seed_layout: dict[int, dict[str, tuple[int, int]]] = {}
        for g in self.groups:
            slots = {}
            if isinstance(g, KronGroup) and g.cfg.q("factors"):
                for side in g.sides:
                    if side.mode == "dense":
                        slots[side.name] = (seed_rows, seed_rows + g.B)
                        seed_rows += g.B
            self.seed_layout[id(g)] = slots
        self._upload = _Upload(len(self.groups), max(seed_rows, 1), device)
        # rows padded to 8 values (32 bytes): every row's address equally aligned, so one kernel variant
        self.table, self.seeds = self._upload.views(self._upload.dev)
        self._seed_vals = np.zeros(self.seeds.numel(), dtype=np.int64)  # the host's copy of the seeds
        self._seed_base = self._seed_vals.copy()  # each row's seed at step 0
        for g in self.groups:
            for side, (a, _) in self.seed_layout[id(g)].items():
                for j, spec in enumerate(g.specs):
                    self._seed_base[a + j] = block_seed(spec.index, side, 0)
        self._size = {id(g): sum(s.numel for s in g.specs) for g in self.groups}  # the launch order
        self._pids = {id(g): sorted({s.param for s in g.specs}) for g in self.groups}  # (keys)
        self.entries: dict[int, _Entry] = {}
        self.lane_of = assign_lanes(self._size, streams)  # group id -> lane (fixed: its graphs live in its pool)
        # lane 0 replays on the caller's stream, lane k > 0 on a stream of its own; each lane has its own memory
        # pool and its own side stream, on which its graphs are recorded and its eager steps run: torch gives
        # cuBLAS a workspace per stream, and a graph keeps the workspace of the stream it was recorded on, so
        # graphs of two lanes recorded on one stream would share one workspace while they run at once.
        # (Lane 0's pool and side stream also record the check's graph.)
        new_stream = (lambda: torch.cuda.Stream(device)) if record else (lambda: None)
        self.lane_streams = [None] + [new_stream() for _ in range(1, streams)]
        self.pools = [torch.cuda.graph_pool_handle() if record else None for _ in range(streams)]
        self.sides = [new_stream() for _ in range(streams)]
        self.counts = {"eager": 0, "captures": 0, "replays": 0}
        self._check: tuple[tuple, torch.cuda.CUDAGraph | None, Tensor | None, Any] = ((), None, None, None)
        self._check_failed = False  # (finite_flag)
        self._check_tensors: tuple[list[Tensor], list[int], tuple] = ([], [], ())  # finite_flag: last call's, key
        self._ready: set[int] | None = None  # the groups whose buffers hold this step's gradients (check_operands)
        self._operands: tuple | None = None  # check_operands' last (inputs, answer, ready groups)
        self.counters: dict[str, int] | None = None  # the optimizer's counters, also incremented
        # (key caches: per group id, the last key's parts and what they were made from)
        self._state_keys: dict[int, tuple] = {}
        self._runs_keys: dict[int, tuple] = {}
        self._plist: dict[int, list[Tensor]] = {}
        self._modes: tuple | None = None  # this step's math modes (launch)
        self._gate = self.table[:, scalars.GATE]
        # gate != 0 per row, worked out once a step (_open_rows) for the torch ops' gated writes to read
        self._open = torch.zeros(len(self.groups), dtype=torch.bool, device=device)

    def install(self, opt: Any) -> GroupGraphs:
        """Make these the graphs ``opt`` (a :class:`~scao_dist.SCAO`) steps its groups on this device through,
        keyed as its step looks them up (the groups' device: ``cuda:0``, not ``cuda``); returns ``self``. What
        the tests and ``bench`` use to run the device-input path without graphs (``record=False``)."""
        opt._graphs = {self.device: self}
        return self

    # ------------------------------------------------------------------------ eligibility
    def eligible(self, grp: Group, idx: Sequence[int]) -> bool:
        if grp.device != self.device or id(grp) not in self.pos or len(idx) != grp.B or not grp.capturable():
            return False
        if isinstance(grp, KronGroup) and not all(grp.ready):
            return False
        return grp.steps.count(grp.steps[0]) == grp.B

    def _entry(self, grp: Group) -> _Entry:
        e = self.entries.get(id(grp))
        if e is None:
            m, n = grp.specs[0].shape
            dtype = grp.grad_dtype
            slots = self.seed_layout[id(grp)]
            pos = self.pos[id(grp)]
            row = StepScalars(self.table[pos, : len(scalars.FIELDS)], open_flag=self._open[pos])
            dev = DeviceInputs(row, {k: self.seeds[a:b] for k, (a, b) in slots.items()})
            grads = torch.zeros(grp.B, m, n, dtype=dtype, device=self.device)
            e = self.entries[id(grp)] = _Entry(grads, dev, slots, views=_grad_views(grp, grads))
        return e

    def install_grad_views(self) -> None:
        """Zero every gradient buffer that can hold its parameters' gradients whole and make those
        parameters' ``.grad`` views into it (:meth:`SCAO.zero_grad`): autograd then accumulates into
        the buffer in place, and the step copies nothing (as DDP's ``gradient_as_bucket_view``). The
        parameters of the other captured groups (column blocks of wider weights) get a zeroed gradient
        tensor of their own, the same one every step: the check that copies them in
        (:meth:`check_operands`) then sees the same addresses at every step and is replayed."""
        for gid, e in self.entries.items():
            if e.views:
                e.grads.zero_()
                for p, view in e.views:
                    p.grad = view
                continue
            grp = self.groups[self.pos[gid]]
            for pid in self._pids[gid]:
                p = grp.params[pid]
                home = e.homes.get(pid)
                if home is None or home.shape != p.shape or home.dtype != p.dtype or home.device != p.device:
                    home = e.homes[pid] = torch.zeros_like(p, memory_format=torch.contiguous_format)
                else:
                    home.zero_()
                p.grad = home

    @staticmethod
    def _aliased(e: _Entry) -> bool:
        """Are the gradients the buffer's views (the last ``zero_grad`` installed them, autograd kept them:
        it accumulates into a ``.grad`` in place, the same tensor; one that replaced it is another)?"""
        return bool(e.views) and same_objects(list(map(grad_of, e.view_params)), e.view_grads)

    # ------------------------------------------------------------------------------ check
    def check_operands(
        self, gather: bool, same: bool = False
    ) -> tuple[list[Tensor], list[tuple[Tensor, Tensor]], set[int]]:
        """What the step's NaN/inf check reads for the captured groups: the gradient buffers the parameters'
        ``.grad`` are views of (checked where they are), and, with ``gather``, the blocks of the groups whose
        ``.grad`` are not views (column blocks of wider weights) as ``(block, its rows of the buffer)``: the
        check copies them in on its way (:func:`~scao_dist.kernels.finite_gather`), and :meth:`launch` does
        not copy them again. Returns those and the indices of the parameters covered (in the optimizer's
        parameter list). ``gather`` only when nothing changes the gradients between the check and the step
        (one rank, no reduction after it). ``same``: every parameter's ``.grad`` is the tensor of the last
        call (``SCAO._with_grad``), so the answer is the last one (with the same ``gather``, no new group)."""
        memo = self._operands
        if same and memo is not None and memo[0] == (gather, len(self.entries)):
            self._ready = set(memo[2])
            return memo[1]
        checks: list[Tensor] = []
        copies: list[tuple[Tensor, Tensor]] = []
        covered: set[int] = set()
        self._ready = set()
        for gid, e in self.entries.items():
            if self._aliased(e):
                checks.append(e.grads)
            elif gather:
                grp = self.groups[self.pos[gid]]
                grads = list(map(grad_of, self._params(grp)))
                if not same_objects(e.gather[0], grads) and any(g is None or g.device != self.device for g in grads):
                    continue
                copies += self._blocks(grp, e, grads)
            else:
                continue
            covered.update(self._pids[gid])
            self._ready.add(gid)
        self._operands = ((gather, len(self.entries)), (checks, copies, covered), frozenset(self._ready))
        return checks, copies, covered

    def _blocks(self, grp: Group, e: _Entry, grads: list[Tensor]) -> list[tuple[Tensor, Tensor]]:
        """``(block of its parameter's gradient, the buffer's rows for it)`` for every block of the group; the
        views made again only when a gradient is another tensor than last step (:meth:`install_grad_views`
        keeps them the same)."""
        seen, pairs = e.gather
        if same_objects(seen, grads):
            return pairs
        rows = list(e.grads.unbind(0))
        pairs = []
        for i, s in enumerate(grp.specs):
            g = grp.params[s.param].grad
            block = g[s.r0 : s.r1, s.c0 : s.c1] if g.dim() == 2 and s.kind == "kron" else grp.block_view(i, g)
            pairs.append((block, rows[i]))
        e.gather = (grads, pairs)
        return pairs

    def finite_flag(self, grads: Sequence[Tensor], copies: Sequence[tuple[Tensor, Tensor]] = ()) -> Tensor | None:
        """:func:`~scao_dist.kernels.finite_gather` of ``grads`` and ``copies`` (:meth:`check_operands`), replayed
        from a CUDA graph once the same tensors (addresses, shapes, strides, dtypes) come a second time in a
        row: one launch, at the start of the step where the GPU waits for the host anyway. Same flag and
        copies, bit for bit (the same operations, recorded)."""
        tensors = [*grads, *(t for pair in copies for t in pair)]
        if not self.record or not tensors or any(g.device != self.device for g in tensors):
            return kernels.finite_gather(grads, copies)
        key = self._check_key(tensors, len(grads))
        seen, graph, out = self._check[:3]
        if key == seen and graph is not None:
            graph.replay()
            return out
        if key != seen or self._check_failed:
            self._check = (key, None, None, None)
            return kernels.finite_gather(grads, copies)
        keep: list = []
        try:
            graph, out = self._record(lambda _graph: kernels.finite_gather(grads, copies, keep))
        except Exception as err:  # nothing ran: the check stays eager
            self._check_failed = True
            warnings.warn(
                f"SCAO(cuda_graph=True): capturing the non-finite check failed ({type(err).__name__}: {err}); "
                "it runs eagerly from now on.",
                RuntimeWarning,
                stacklevel=4,
            )
            return kernels.finite_gather(grads, copies)
        self._check = (key, graph, out, keep)  # (keep: the tables the graph reads)
        graph.replay()
        return out

    def _check_key(self, tensors: list[Tensor], n_checks: int) -> tuple:
        """What the recorded check depends on: every tensor's address, shape, strides and dtype (computed again
        only when the tensors are not the very ones of the last call)."""
        last, ptrs, key = self._check_tensors
        now = [g.data_ptr() for g in tensors]
        if now != ptrs or not same_objects(last, tensors):
            key = tuple((p, g.shape, g.stride(), g.dtype) for p, g in zip(now, tensors)), n_checks
            self._check_tensors = (tensors, now, key)
        return key

    # ------------------------------------------------------------------------------ step
    def upload_scalars(self, work: Sequence[Work]) -> None:
        """The device inputs of the next step of ``work``: the scalars of step ``t + 1`` (lr, bias
        corrections) and the dither seeds, written to the device tables (stream-ordered after the last
        replay, which read the old ones) through pinned buffers, without the host waiting. Changes no
        optimizer state: a step skipped afterwards just leaves them to be written again."""
        table, seed_arr = self._upload.fill()
        table.fill(0.0)  # (the rows of groups not stepped: gate shut)
        seeds = False
        for grp, _, hp, _ in work:
            t = grp.steps[0] + 1  # (every block is at the same step: eligible)
            row = scalars.host_values(hp.lr, hp.weight_decay, *grp.bias_at(t, hp))
            table[self.pos[id(grp)], : len(row)] = row  # (rounded to fp32 on the way, as a tensor copy would)
            for a, b in self.seed_layout[id(grp)].values():
                # block_seed(block, side, t) = block_seed(block, side, 0) + t * SEED_STEP (int64, as on the device)
                np.add(self._seed_base[a:b], t * SEED_STEP, out=self._seed_vals[a:b])
                seeds = True
        if seeds:
            seed_arr[:] = self._seed_vals
        self._upload.send(seeds)
        self._open_rows()

    def arm(self, finite: Tensor | None) -> None:
        """The gate of every group's row: this step's non-finite check (``finite``, a device bool), or
        open when there is none; queued after the upload of the rows (:meth:`upload_scalars`), which
        writes them open. A step whose gate is shut changes nothing."""
        if finite is None:
            self._gate.fill_(1.0)
        else:
            self._gate.copy_(finite)
        self._open_rows()

    def _open_rows(self) -> None:
        """``gate != 0`` of every row into the rows' ``open_flag`` (:class:`.kernels.scalars.StepScalars`), queued
        after what wrote the gates: one comparison a step instead of one per gated write in the groups' steps."""
        torch.ne(self._gate, 0.0, out=self._open)

    def launch(self, work: Sequence[Work], check: FiniteCheck | None = None) -> dict[int, list[int]] | None:
        """Take the step (its scalars uploaded, the gate armed): advance the step counts, copy in the
        gradients that are not views of the buffers, replay (or capture, or step eagerly) each group,
        largest first; returns the refreshes due, per group id.

        A replay is gated on the device, so it needs no answer from ``check``; an eager step is not, so
        the host asks ``check`` first (it waits for the GPU's check once): if the gradients are not
        all finite it stops there and returns ``None``, every step count already advanced (the caller
        undoes them) and nothing else changed (the replays launched found their gate shut)."""
        for grp, _, _, _ in work:
            grp.steps[:] = [t + 1 for t in grp.steps]  # (every block: eligible)
        # the groups whose buffers hold their gradients already (views, or copied in by the check) first,
        # then the rest after one copy of their gradients into the buffers: the GPU starts on a replay
        # while the host gathers those; within each, the largest first (the host launches the next replay
        # while the GPU runs a long one; the groups are independent)
        views: list[Work] = []
        copies: list[Work] = []
        ready, self._ready = self._ready, None  # (None: check_operands did not run this step)
        for w in sorted(work, key=lambda w: -self._size[id(w[0])]):
            e = self._entry(w[0])  # (made here at a group's first captured step)
            filled = id(w[0]) in ready if ready is not None else self._aliased(e)
            (views if filled else copies).append(w)
        self._modes = self._math_modes()  # (the same for every group of the step)
        lanes = _Lanes(self, work)
        try:
            with torch.cuda.device(self.device) if self.record else contextlib.nullcontext():
                lanes.start()  # (the other lanes wait for what the caller's stream holds now: check, scalars)
                for grp, _, hp, runs in views:
                    if not lanes.run(grp, self._run, hp, runs, check):
                        return None
                self._copy_gradients(copies)
                if copies:
                    lanes.start()  # (and for the copies: a rare case, it orders them after the replays before it)
                for grp, _, hp, runs in copies:
                    if not lanes.run(grp, self._run, hp, runs, check):
                        return None
        finally:
            self._modes = None
            lanes.join()
        # (after the replays: the host works out the refreshes due while the GPU runs them)
        return {id(grp): grp.due(idx, hp) if isinstance(grp, KronGroup) else [] for grp, idx, hp, _ in work}

    def _copy_gradients(self, work: Sequence[Work]) -> None:
        """The gradients of ``work``'s groups into their buffers, in one multi-tensor copy."""
        dst, src = [], []
        for grp, idx, _, _ in work:
            dst += list(self._entry(grp).grads.unbind(0))
            src += [grp.block_view(i, grp.params[grp.specs[i].param].grad) for i in idx]
        if dst:
            torch._foreach_copy_(dst, src)

    def _run(self, grp: Group, hp: Hyper, runs: list[list[int]], check: FiniteCheck | None) -> bool:
        """One group's step: a gated replay, or a capture and a gated replay, or (a new key, a failed
        capture) an eager step once ``check`` says the gradients are finite. ``False``: they are not,
        and this group was not stepped."""
        e = self._entry(grp)
        if isinstance(grp, KronGroup):
            grp.prepare_captured(runs)  # (the Gram inverses of bases swapped in: derived data, not state)
        key = self.key(grp, hp, runs)
        if key != e.key or e.failed:  # new launches (one eager step with the device inputs, capture at the next)
            if check is not None and not check.ok():
                return False
            if key != e.key:
                if e.graph is not None:
                    e.retired.append((e.graph, e.keep))
                e.key, e.graph, e.keep = key, None, []
            self._eager(grp, hp, runs, e)
            return True
        if not self.record:  # the CPU twin of a replay: the body, its writes gated by the row
            self._eager(grp, hp, runs, e)
            return True
        if e.graph is None:
            e.graph = self._capture(grp, hp, runs, e)
            if e.graph is None:  # (the capture failed and was reported; nothing ran)
                if check is not None and not check.ok():
                    return False
                self._eager(grp, hp, runs, e)
                return True
        e.graph.replay()  # (gated on the device: no need to ask ``check``)
        self._count("replays")
        return True

    def _capture(self, grp: Group, hp: Hyper, runs: list[list[int]], e: _Entry) -> torch.cuda.CUDAGraph | None:
        """Record the group's step; ``None`` if recording failed (reported; the group then steps eagerly)."""
        try:
            graph, _ = self._record(lambda g: self._body(grp, hp, runs, e), self.lane_of[id(grp)])
        except Exception as err:  # nothing ran
            e.failed = True
            warnings.warn(
                f"SCAO(cuda_graph=True): capturing a step of a group of {grp.B} blocks of shape "
                f"{tuple(grp.specs[0].shape)} failed ({type(err).__name__}: {err}); it steps eagerly "
                "from now on (same results, more host time).",
                RuntimeWarning,
                stacklevel=5,
            )
            return None
        e.retired = []  # (capturing synchronised the device: no old replay is running)
        e.keep = [*grp.t.values(), e.grads, *grp.derived_tensors(), self.table]
        self._count("captures")
        return graph

    def _record(self, body: Callable[[torch.cuda.CUDAGraph], Any], lane: int = 0) -> tuple[torch.cuda.CUDAGraph, Any]:
        """``body(graph)`` recorded into a new graph of the lane's pool, on the lane's side stream ordered after
        the current one; returns the graph and what ``body`` returned. Raises what recording raised (then
        nothing ran)."""
        graph, side = torch.cuda.CUDAGraph(), self.sides[lane]

        def record() -> Any:
            with torch.cuda.graph(graph, pool=self.pools[lane], stream=side, capture_error_mode="thread_local"):
                return body(graph)

        return graph, self._on_side_stream(record, side)

    def _eager(self, grp: Group, hp: Hyper, runs: list[list[int]], e: _Entry) -> None:
        self._on_side_stream(lambda: self._body(grp, hp, runs, e), self.sides[self.lane_of[id(grp)]])
        self._count("eager")

    def _count(self, what: str) -> None:
        self.counts[what] += 1
        if self.counters is not None:
            self.counters[f"cuda_graph_{what}"] += 1

    def _on_side_stream(self, fn: Callable[[], Any], side: Any) -> Any:
        """``fn()`` on ``side``, ordered after the current stream's work and before its next (directly without
        a side stream); returns what ``fn`` returned."""
        if side is None:
            return fn()
        cur = torch.cuda.current_stream(self.device)
        side.wait_stream(cur)
        with torch.cuda.stream(side):
            out = fn()
        cur.wait_stream(side)
        return out

    @staticmethod
    def _body(grp: Group, hp: Hyper, runs: list[list[int]], e: _Entry) -> None:
        """The recorded work: the group's update over its chunks, every per-step value from the device."""
        nan_hp = dataclasses.replace(hp, **NAN_HYPER)
        for run in runs:
            a, b = run[0], run[-1] + 1
            dev = DeviceInputs(e.dev.hyper, {k: v[a:b] for k, v in e.dev.seeds.items()})
            grp.update(run, nan_hp, e.grads[a:b], math.nan, math.nan, dev)

    def key(self, grp: Group, hp: Hyper, runs: list[list[int]]) -> tuple:
        """What the recorded launches depend on, besides the device inputs (see the module docstring)."""
        consts = (hp.beta1, hp.beta2, hp.eps, hp.shampoo_beta)
        weights = tuple([p.data_ptr() for p in self._params(grp)])
        modes = self._modes or self._math_modes()
        return (self._state_key(grp), consts, weights, modes, self._runs_key(grp, runs), grp.capture_key())

    def _math_modes(self) -> tuple:
        """The matmul precision flags and the kernel backend (worked out once per step: :meth:`launch`)."""
        mm = torch.backends.cuda.matmul
        return (mm.allow_tf32, mm.allow_bf16_reduced_precision_reduction, kernels.backend(self.table).__name__)

    def _state_key(self, grp: Group) -> tuple:
        """The group's state tensors' names, addresses, shapes and dtypes; the shapes and dtypes are looked
        up again only when the tensors are not the very ones of the last call with the same addresses
        (a tensor object's shape and dtype change only through ``resize_``/``set_``/``.data``, which
        nothing here applies to state)."""
        names, vals = tuple(grp.t), list(grp.t.values())
        ptrs = [v.data_ptr() for v in vals]
        last = self._state_keys.get(id(grp))
        if last is not None and last[0] == names and last[2] == ptrs and same_objects([r() for r in last[1]], vals):
            return last[3]
        key = (names, tuple(zip(ptrs, [v.shape for v in vals], [v.dtype for v in vals])))
        self._state_keys[id(grp)] = (names, [weakref.ref(v) for v in vals], ptrs, key)  # (weak: replaced state is
        # freed; the graph keeps what it reads)
        return key

    def _runs_key(self, grp: Group, runs: list[list[int]]) -> tuple:
        """``runs`` as a tuple, kept while the optimizer passes the same (cached, never mutated) list."""
        last = self._runs_keys.get(id(grp))
        if last is not None and last[0] is runs:
            return last[1]
        key = tuple(map(tuple, runs))
        self._runs_keys[id(grp)] = (runs, key)
        return key

    def _params(self, grp: Group) -> list[Tensor]:
        """The group's parameters (made once)."""
        ps = self._plist.get(id(grp))
        if ps is None:
            ps = self._plist[id(grp)] = [grp.params[pid] for pid in self._pids[id(grp)]]
        return ps


def _grad_views(grp: Group, grads: Tensor) -> list[tuple[Tensor, Tensor]]:
    """``(param, view of grads shaped like it)`` for every parameter of the group, when each is the
    group's whole rows (:meth:`whole_rows`) and has the buffer's dtype; ``[]`` otherwise (the step
    then copies the gradients in)."""
    out = []
    for pid, pos in grp.param_runs().items():
        p = grp.params[pid]
        if p.dtype != grads.dtype or p.device != grads.device or not grp.whole_rows(pos):
            return []
        out.append((p, grads[pos[0] : pos[-1] + 1].view(p.shape)))
    return out
