"""Helpers for stacked state: tensors whose first dim is the blocks of a group.

Rows of a contiguous run of blocks are views; any other set of rows is gathered (a copy). Padding
helpers widen a block's basis or second moment to the group's allocated width with zeros, which
every consumer treats as "no direction". Seeds make the dither and the random probes of a block
replay exactly on resume.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from . import quant


def pad_last(x: Tensor, size: int) -> Tensor:
    """Zero-pad the last dim of ``x`` to ``size`` (left as it is where it is not smaller)."""
    return torch.nn.functional.pad(x, (0, size - x.shape[-1])) if x.shape[-1] < size else x


def pad_to(x: Tensor, shape: Sequence[int]) -> Tensor:
    """Zero-pad the last two dims of ``x`` to ``shape`` (left as it is where it is not smaller)."""
    rows, cols = shape
    if x.shape[-2] > rows or x.shape[-1] > cols or tuple(x.shape[-2:]) == (rows, cols):
        return x
    return torch.nn.functional.pad(x, (0, cols - x.shape[-1], 0, rows - x.shape[-2]))


def is_run(idx: Sequence[int]) -> bool:
    """Are the blocks ``idx`` a contiguous run (their rows of a stacked tensor a view)?"""
    return list(idx) == list(range(idx[0], idx[0] + len(idx)))


def block_rows(x: Tensor, idx: Sequence[int]) -> Tensor:
    """Rows ``idx`` of a stacked tensor: a view for a contiguous run, else a gathered copy."""
    if is_run(idx):
        return x[idx[0] : idx[0] + len(idx)]
    return x.index_select(0, torch.tensor(list(idx), device=x.device))


def round32(n: int) -> int:
    """``n`` rounded up to whole quantisation groups (the stored width of a codes row)."""
    return quant.n_groups(n) * quant.GROUP


SEED_STEP = 7919


def block_seed(block: int, side: str, step: int) -> int:
    """Deterministic seed for (block, side, step): dither and random probes replay on resume."""
    return (block * 2 + (side == "R")) * 1_000_003 + step * SEED_STEP + 12345
