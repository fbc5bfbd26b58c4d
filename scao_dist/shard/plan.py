"""Who owns which block: a deterministic, cost-balanced assignment of blocks to ranks.

Every rank computes the same plan from the same parameter shapes (no communication), so the
plan itself is part of the contract between ranks; :func:`plan_fingerprint` lets the runtime
check that all ranks agree.

Assignment is LPT (longest processing time first): blocks sorted by decreasing cost, each
placed on the currently least-loaded rank (ties to the lowest rank), as Meta's
distributed_shampoo does. Cost of a block = per-step work + amortised refresh work:

    step     ~ m n (k_L + k_R)            rotations and back-rotations
    refresh  ~ (d_L^3 + d_R^3) / freq      for dense sides (eigh / power step)
             ~ d k^2 / freq                for stream sides (Nystrom)

with k estimated by ``rank_max``. State bytes are reported next to the cost.
Refresh *phases* (which step of the ``precond_freq`` cycle a block refreshes on) are given to
*refresh batches* (runs of same-shaped blocks, see :func:`refresh_batches`) and spread the same
way, independently of the world size (so a run resumed at another world size refreshes on the
same steps); no step pays for all refreshes, and the blocks that refresh together are computed
together.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..blocks import BlockSpec


@dataclass
class Plan:
    world_size: int
    owner: list[int]  # block index -> rank
    phase: list[int]  # block index -> refresh phase in [0, precond_freq)
    cost: list[float] = field(default_factory=list)
    nbytes: list[int] = field(default_factory=list)
    batch: list[int] = field(default_factory=list)  # block index -> refresh batch (-1: not a Kronecker block)

    def owned(self, rank: int) -> list[int]:
        return [b for b, r in enumerate(self.owner) if r == rank]

    def table(self) -> str:
        """Rank -> number of blocks, state bytes, relative cost; one line per rank."""
        lines = ["rank  blocks  state_MiB  cost_share"]
        total = sum(self.cost) or 1.0
        for r in range(self.world_size):
            mine = self.owned(r)
            mib = sum(self.nbytes[b] for b in mine) / 2**20
            share = sum(self.cost[b] for b in mine) / total
            lines.append(f"{r:>4}  {len(mine):>6}  {mib:>9.2f}  {share:>10.3f}")
        return "\n".join(lines)


def _side_k(d: int, mode: str, rank_max: int) -> int:
    return d if mode == "none" else min(d, rank_max)


def block_cost(spec: BlockSpec, rank_max: int, precond_freq: int) -> float:
    m, n = spec.shape
    if spec.kind == "adam":
        return float(spec.numel)
    kl, kr = _side_k(m, spec.left, rank_max), _side_k(n, spec.right, rank_max)
    step = m * n * (kl + kr)
    refresh = 0.0
    for d, mode, k in ((m, spec.left, kl), (n, spec.right, kr)):
        if mode == "dense":
            refresh += d**3
        elif mode == "stream":
            refresh += d * k * k
    return float(step + refresh / max(precond_freq, 1))


def block_bytes(spec: BlockSpec, rank_max: int, quantize: bool) -> int:
    """Rough state bytes of a block (for the plan table; memory_report counts exactly)."""
    m, n = spec.shape
    per = 2 if quantize else 8
    total = spec.numel * per + (spec.numel if spec.dtype.itemsize == 2 else 0)
    for d, mode in ((m, spec.left), (n, spec.right)):
        if mode == "dense":
            total += d * d * (1 if quantize else 4)
        elif mode == "stream":
            total += d * min(d, rank_max) * 4
    return total


def make_plan(
    specs: Sequence[BlockSpec],
    world_size: int,
    *,
    rank_max: Sequence[int],
    precond_freq: Sequence[int],
    quantize: bool,
    stagger: bool,
) -> Plan:
    """Assign every block an owner and a refresh phase (``rank_max``/``precond_freq`` per block)."""
    cost = [block_cost(s, rank_max[i], precond_freq[i]) for i, s in enumerate(specs)]
    nbytes = [block_bytes(s, rank_max[i], quantize) for i, s in enumerate(specs)]
    owner = [0] * len(specs)
    load = [0.0] * world_size
    for b in sorted(range(len(specs)), key=lambda b: (-cost[b], b)):
        r = min(range(world_size), key=lambda r: (load[r], r))
        owner[b] = r
        load[r] += cost[b]
    phase, batch = [0] * len(specs), [-1] * len(specs)
    per_phase: dict[int, list[float]] = {}
    for k, (f, chunk) in enumerate(refresh_batches(specs, cost, precond_freq, rank_max)):
        loads = per_phase.setdefault(f, [0.0] * f)
        ph = min(range(f), key=lambda p: (loads[p], p))
        for b in chunk:
            batch[b] = k
            if stagger:  # over all blocks, not per rank: the schedule must not depend on the world size
                phase[b] = ph
        loads[ph] += sum(cost[b] for b in chunk)
    return Plan(world_size, owner, phase, cost, nbytes, batch)


BATCH_SHARES = 3.0
"""A refresh batch holds at most this many phases' worth of work (``cost / precond_freq`` each):
batches amortise a refresh's launches and host syncs over their blocks (on a 43M GPT its work
is launch-bound), while the cap keeps one step's refresh load within a small multiple of the mean."""
REFRESH_BATCH_BYTES = 512 * 2**20
"""And at most this estimated working set (:func:`refresh_bytes`), so a deep model's batch of
same-shaped blocks does not take a large transient from the device (a 16 GB card's plan counts it)."""


def basis_elems(spec: BlockSpec, rank_max: int, oversample: int = 0) -> int:
    """Elements of a block's widest bases: d x d per dense side, d x (min(d, rank_max) + oversample)
    per stream side (``oversample``: the probes, when they count)."""
    elems = 0
    for d, mode in zip(spec.shape, (spec.left, spec.right)):
        if mode == "dense":
            elems += d * d
        elif mode == "stream":
            elems += d * (min(d, rank_max) + oversample)
    return elems


def refresh_bytes(spec: BlockSpec, rank_max: int, oversample: int = 16) -> int:
    """Estimated transient bytes of one block's refresh: about six float64 copies of each side's
    sketch (d x (k + p)) or dense factor (d x d)."""
    return 6 * 8 * basis_elems(spec, rank_max, oversample)


def refresh_batches(
    specs: Sequence[BlockSpec], cost: Sequence[float], precond_freq: Sequence[int], rank_max: Sequence[int]
) -> list[tuple[int, list[int]]]:
    """The Kronecker blocks grouped into refresh batches that share one phase, largest first.

    Blocks of one shape and kind (one :attr:`BlockSpec.key`, so one stacked group on each rank) are
    split into the fewest contiguous runs whose cost stays under ``BATCH_SHARES`` phases' worth and
    whose working set stays under ``REFRESH_BATCH_BYTES``; all blocks of a run refresh at the same
    step, so each rank computes its share of the run as one batch. Returns ``(precond_freq, block
    indices)`` per batch, in LPT order.
    """
    by_key: dict[tuple, list[int]] = {}
    for b, s in enumerate(specs):
        if s.kind == "kron":
            by_key.setdefault((s.key, max(precond_freq[b], 1)), []).append(b)
    totals: dict[int, float] = {}
    for (_, f), blocks in by_key.items():
        totals[f] = totals.get(f, 0.0) + sum(cost[b] for b in blocks)
    batches = []
    for (_, f), blocks in by_key.items():
        cap = BATCH_SHARES * totals[f] / f
        n = min(len(blocks), max(1, math.ceil(sum(cost[b] for b in blocks) / max(cap, 1e-30))))
        fit = max(1, REFRESH_BATCH_BYTES // max(refresh_bytes(specs[blocks[0]], rank_max[blocks[0]]), 1))
        n = max(n, math.ceil(len(blocks) / fit))
        size = math.ceil(len(blocks) / n)
        batches += [(f, blocks[i : i + size]) for i in range(0, len(blocks), size)]
    return sorted(batches, key=lambda fb: (-sum(cost[b] for b in fb[1]), fb[1][0]))


def plan_fingerprint(specs: Sequence[BlockSpec]) -> int:
    """A 63-bit hash of the block layout (shapes, kinds, dtypes) to compare across ranks."""
    h = hashlib.sha256()
    for s in specs:
        h.update(
            repr((s.index, s.param, s.group, s.r0, s.r1, s.c0, s.c1, s.kind, s.left, s.right, str(s.dtype))).encode()
        )
    return int.from_bytes(h.digest()[:8], "little") & 0x7FFFFFFFFFFFFFFF
