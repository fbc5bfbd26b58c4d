"""Eigenbasis refreshes: computed by the block's owner, swapped in at a step boundary."""

from __future__ import annotations

from typing import Any

from ..config import Hyper


class RefreshScheduler:
    """Runs the refreshes that the groups report due (synchronously when ``lag == 0``)."""

    def __init__(self, opt: Any, lag: int) -> None:
        self.opt = opt
        self.lag = lag

    def submit(self, grp: Any, i: int, hp: Hyper) -> None:
        inputs = grp.refresh_inputs(i)
        bases = grp.compute_refresh(i, inputs, hp)
        self._apply(grp, i, inputs, bases)

    def _apply(self, grp: Any, i: int, inputs: list, bases: list) -> None:
        counters = self.opt.counters
        for inp, basis in zip(inputs, bases):
            if inp is not None and basis is None:
                counters["basis_failures"] += 1
        counters["refreshes"] += 1
        grp.apply_bases(i, bases)

    def step_boundary(self) -> None:
        return None

    def drain(self) -> None:
        return None
