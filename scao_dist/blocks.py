"""Split parameters into the 2-D blocks the optimizer works on.

A parameter with ``ndim >= 2`` is viewed as a matrix ``(shape[0], numel / shape[0])`` (a conv
kernel ``(out, in, kh, kw)`` becomes ``(out, in*kh*kw)``). Each side longer than
``max_precond_dim`` is cut into near-equal chunks no longer than it, so one weight may become
several blocks; each block is the unit of preconditioning, of state and of ownership across ranks.

Each side of a block gets a *mode*:

* ``"none"``  — shorter than ``min_precond_dim``: left un-rotated (identity basis);
* ``"dense"`` — at most ``full_factor_dim``: a d x d int8 Kronecker factor;
* ``"stream"`` — longer: an O(d k) streamed range sketch of the factor instead of d x d.

1-D parameters (biases, norm gains), and matrices whose both sides are ``"none"``, take the
plain AdamW path (kind ``"adam"``, one block viewed as ``(1, numel)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SIDE_MODES = ("none", "dense", "stream")


@dataclass(frozen=True)
class BlockSpec:
    """One block: a rectangle ``[r0:r1, c0:c1]`` of the 2-D view of parameter ``param``."""

    index: int  # global block id, identical on every rank
    param: int  # position of the parameter in the optimizer's flat parameter list
    group: int  # its param_group
    r0: int
    r1: int
    c0: int
    c1: int
    kind: str  # "kron" or "adam"
    left: str  # side mode of the rows
    right: str  # side mode of the columns
    dtype: torch.dtype  # parameter dtype (bf16 -> error-correction bits)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.r1 - self.r0, self.c1 - self.c0)

    @property
    def numel(self) -> int:
        return (self.r1 - self.r0) * (self.c1 - self.c0)

    @property
    def key(self) -> tuple:
        """Blocks with equal keys are stacked and updated together in one batched group."""
        return (self.group, self.kind, self.shape, self.left, self.right, self.dtype)


def matrix_view(t: torch.Tensor) -> torch.Tensor:
    """The 2-D view the blocks index into: ``(shape[0], -1)``, or ``(1, numel)`` below 2-D."""
    if t.ndim >= 2:
        return t.reshape(t.shape[0], -1)
    return t.reshape(1, -1)


def block_matrix(t: torch.Tensor, s: BlockSpec) -> torch.Tensor:
    """The 2-D view of ``t`` that block ``s`` indexes: :func:`matrix_view`, or ``(1, numel)`` for the
    AdamW kind (a matrix too small to precondition is one flat block, like a 1-D parameter)."""
    return t.reshape(1, -1) if s.kind == "adam" else matrix_view(t)


def block_of(t: torch.Tensor, s: BlockSpec) -> torch.Tensor:
    """Block ``s`` of ``t`` (a parameter or its gradient): ``block_matrix(t, s)[r0:r1, c0:c1]``."""
    return block_matrix(t, s)[s.r0 : s.r1, s.c0 : s.c1]


def write_block(t: torch.Tensor, s: BlockSpec, value: torch.Tensor) -> None:
    """``block_of(t, s) = value``, also when the 2-D view of ``t`` is a copy (a tensor that is not
    contiguous, e.g. a channels-last conv kernel): then the whole tensor is rewritten, keeping its
    memory format."""
    view = block_matrix(t, s)  # a view of t when t is contiguous
    view[s.r0 : s.r1, s.c0 : s.c1] = value
    if not t.is_contiguous():  # the 2-D view was a copy: write it back
        t.copy_(view.reshape(t.shape))


def _chunks(d: int, limit: int) -> list[tuple[int, int]]:
    """Cut ``range(d)`` into the fewest near-equal chunks no longer than ``limit``."""
    n = max(1, math.ceil(d / limit))
    base, extra = divmod(d, n)
    out, start = [], 0
    for i in range(n):
        size = base + (1 if i < extra else 0)
        out.append((start, start + size))
        start += size
    return out


def side_mode(d: int, min_precond_dim: int, full_factor_dim: int) -> str:
    if d < min_precond_dim:
        return "none"
    return "dense" if d <= full_factor_dim else "stream"


def split_param(
    p: torch.Tensor,
    *,
    param: int,
    group: int,
    first_index: int,
    max_precond_dim: int,
    min_precond_dim: int,
    full_factor_dim: float,
) -> list[BlockSpec]:
    """Blocks of one parameter, numbered from ``first_index``."""
    if p.ndim >= 2:
        rows, cols = matrix_view(p).shape
        specs = []
        for r0, r1 in _chunks(rows, max_precond_dim):
            for c0, c1 in _chunks(cols, max_precond_dim):
                left = side_mode(r1 - r0, min_precond_dim, full_factor_dim)
                right = side_mode(c1 - c0, min_precond_dim, full_factor_dim)
                specs.append(
                    BlockSpec(first_index + len(specs), param, group, r0, r1, c0, c1, "kron", left, right, p.dtype)
                )
        if all(s.left != "none" or s.right != "none" for s in specs):
            return specs
    n = p.numel()
    return [BlockSpec(first_index, param, group, 0, 1, 0, n, "adam", "none", "none", p.dtype)]
