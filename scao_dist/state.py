"""What the optimizer holds, in bytes per parameter, by piece."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .groups import CATEGORIES


@dataclass
class MemoryReport:
    """Bytes the optimizer holds on this rank, by category, over the parameters it trains.

    ``bytes_per_param`` divides this rank's bytes by *all* trained parameters (so with N ranks
    it is about total/N); ``owned_params`` is how many of those this rank owns.
    """

    bytes: dict[str, int] = field(default_factory=dict)
    params: int = 0
    owned_params: int = 0

    @property
    def total(self) -> int:
        return sum(self.bytes.values())

    @property
    def bytes_per_param(self) -> float:
        return self.total / max(self.params, 1)

    def per_param(self) -> dict[str, float]:
        return {k: v / max(self.params, 1) for k, v in self.bytes.items()}

    def __str__(self) -> str:
        rows = [f"{'piece':<12}{'MiB':>10}{'B/param':>10}"]
        for k in CATEGORIES:
            rows.append(f"{k:<12}{self.bytes[k] / 2**20:>10.2f}{self.bytes[k] / max(self.params, 1):>10.3f}")
        rows.append(f"{'total':<12}{self.total / 2**20:>10.2f}{self.bytes_per_param:>10.3f}")
        rows.append(f"params trained: {self.params:,} (owned here: {self.owned_params:,})")
        return "\n".join(rows)


def memory_report(optimizer: Any) -> MemoryReport:
    """Count every tensor an :class:`~scao_dist.SCAO` keeps across steps on this rank.

    Categories: ``moments`` (first/second moment codes, residual statistics), ``scales``
    (moment group scales, factor row scales), ``factors`` (int8 Kronecker factors, streamed
    sketches), ``bases`` (eigenvector matrices and probes), ``error_bits`` (bf16 correction
    bits), ``other`` (eigenvalue estimates and the like).
    """
    rep = MemoryReport(bytes=dict.fromkeys(CATEGORIES, 0))
    for grp in optimizer.groups:
        for k, v in grp.nbytes().items():
            rep.bytes[k] += v
        rep.owned_params += grp.numel()
    for key, nbytes in getattr(optimizer.refresher, "pending_bytes", dict)().items():
        rep.bytes[key] += nbytes
    rep.params = sum(s.numel for s in optimizer.specs)
    return rep
