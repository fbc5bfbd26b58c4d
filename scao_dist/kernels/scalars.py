"""This step's hyperparameters as fp32 values on the device, for a captured (CUDA-graph) step.

A CUDA graph replays its launches with the arguments they were captured with: a Python float
(lr, Adam's bias corrections) baked into a launch would keep its capture-time value at every
replay. A captured step passes ``hyper=StepScalars(...)`` instead: a view of a small fp32 device
tensor that is refilled before each replay, and the kernels (and their torch twins) read the
values from it.

Each value is computed on the host in float64 exactly as the float path computes it, then rounded
to fp32 once, the way a Triton launch rounds a float argument and torch rounds a Python scalar
for an fp32 operation. So a step that reads these values computes bit for bit what it computes
from the floats:

    lr, c = 1 - lr wd, bc1 = 1 - b1^t, bc2 = 1 - b2^t, ib1 = 1 / bc1, ib2 = 1 / bc2

and ``gate``: 1 when the step may change the state, 0 when it must not (the step's gradients hold a
NaN/inf: ``capture.GroupGraphs.arm`` writes the check's device flag there after the upload). Every
kernel and twin that writes optimizer state or weights and takes a row writes nothing when it reads 0,
so a replay launched before the host knows the check's answer is safe.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

FIELDS = ("lr", "c", "bc1", "bc2", "ib1", "ib2", "gate")
"""Order of the values in a :class:`StepScalars` row (the kernels load them by these offsets)."""
LR, C, BC1, BC2, IB1, IB2, GATE = range(len(FIELDS))


def host_values(lr: float, wd: float, bc1: float, bc2: float) -> list[float]:
    """The row's values in float64, in :data:`FIELDS` order (rounded to fp32 when stored); the gate open."""
    return [float(lr), 1.0 - lr * wd, float(bc1), float(bc2), 1.0 / bc1, 1.0 / bc2, 1.0]


class StepScalars:
    """A ``(7,)`` fp32 row of this step's hyperparameters (see :data:`FIELDS`), usually a view
    into a table that holds every group's row and is refilled by one copy before a replay."""

    def __init__(self, row: Tensor, open_flag: Tensor | None = None) -> None:
        """``open_flag``: a 0-d device bool kept equal to ``gate != 0`` by whoever writes the gate
        (``capture.GroupGraphs``: once a step for every row), so :attr:`open` need not compare again at
        each read; without it :attr:`open` compares."""
        if row.shape != (len(FIELDS),) or row.dtype != torch.float32 or not row.is_contiguous():
            raise ValueError(f"StepScalars takes a contiguous fp32 tensor of shape ({len(FIELDS)},), got {row}")
        if open_flag is not None and (open_flag.shape != () or open_flag.dtype != torch.bool):
            raise ValueError(f"open_flag must be a 0-d bool tensor, got {open_flag}")
        self.row = row
        self.open_flag = open_flag

    @classmethod
    def of(cls, lr: float, wd: float, bc1: float, bc2: float, device: torch.device | str = "cpu") -> StepScalars:
        """A standalone row holding these values (tests, one-off calls)."""
        return cls(torch.tensor(host_values(lr, wd, bc1, bc2), dtype=torch.float32, device=device))

    def set(self, lr: float, wd: float, bc1: float, bc2: float) -> None:
        """Overwrite the row in place (one host-to-device copy, queued on the current stream)."""
        self.row.copy_(torch.tensor(host_values(lr, wd, bc1, bc2), dtype=torch.float32), non_blocking=True)

    @property
    def device(self) -> torch.device:
        return self.row.device

    # 0-d views, for the torch twins (an fp32 0-d tensor multiplies as the fp32 scalar does)
    @property
    def lr(self) -> Tensor:
        return self.row[LR]

    @property
    def c(self) -> Tensor:
        return self.row[C]

    @property
    def bc1(self) -> Tensor:
        return self.row[BC1]

    @property
    def bc2(self) -> Tensor:
        return self.row[BC2]

    @property
    def ib1(self) -> Tensor:
        return self.row[IB1]

    @property
    def ib2(self) -> Tensor:
        return self.row[IB2]

    @property
    def gate(self) -> Tensor:
        return self.row[GATE]

    @property
    def open(self) -> Tensor:
        """The gate as a 0-d device bool (for ``torch.where`` in the twins: no host read)."""
        return self.open_flag if self.open_flag is not None else self.row[GATE] != 0


def gated_(dst: Tensor, new: Tensor, hyper: StepScalars | None) -> Tensor:
    """``dst.copy_(new)``, or with ``hyper`` only where its gate is open (``dst`` kept when shut): how the
    torch twins and the group's own torch ops write state in a step that reads a row."""
    if hyper is None:
        return dst.copy_(new)
    return torch.where(hyper.open.to(dst.device), new.to(dst.dtype), dst, out=dst)  # (one pass, in place)


def fill_table(table: Tensor, rows: Sequence[Sequence[float]]) -> None:
    """Write several rows of :func:`host_values` into ``table`` (n, 7) with one copy."""
    table.copy_(torch.tensor([list(r) for r in rows], dtype=torch.float32), non_blocking=True)
