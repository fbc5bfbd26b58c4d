"""Collectives between ranks. With no process group (or a group of one) every call is a no-op.

Placeholder contract for the sharded runtime: ``reduce_grads`` brings each block's averaged
gradient to its owner, ``gather_params`` brings every owner's updated blocks to all ranks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


class Comm:
    """The optimizer's view of the process group."""

    def __init__(self, process_group: Any = None) -> None:
        if process_group is None and dist.is_available() and dist.is_initialized():
            process_group = dist.group.WORLD
        self.group = process_group
        self.world_size = dist.get_world_size(process_group) if process_group is not None else 1
        self.rank = dist.get_rank(process_group) if process_group is not None else 0

    def check_same_plan(self, fingerprint: int) -> None:
        if self.world_size == 1:
            return
        raise NotImplementedError("multi-rank sharding lands with the sharded runtime")

    def all_finite(self, grads: Sequence[Tensor]) -> bool:
        """True when every gradient is finite (on every rank)."""
        if not grads:
            return True
        worst = torch.stack([n.float() for n in torch._foreach_norm(list(grads), ord=float("inf"))])
        return bool(torch.isfinite(worst).all())

    def reduce_grads(self, opt: Any, with_grad: set[int]) -> None:
        return None

    def gather_params(self, opt: Any, with_grad: set[int]) -> None:
        return None
