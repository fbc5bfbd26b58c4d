"""Settings: per-param-group hyperparameters and the optimizer-wide structure knobs."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

GROUP_DEFAULTS: dict[str, Any] = dict(
    lr=1e-3,
    betas=(0.9, 0.95),
    eps=1e-8,
    weight_decay=1e-2,
    shampoo_beta=0.95,
    precond_freq=5,
    spectral_mass=0.99,
    rank_min=8,
    rank_max=128,
)
"""Hyperparameters that may differ between param groups (and that schedulers may change)."""


@dataclass(frozen=True)
class Hyper:
    """One param group's hyperparameters, read fresh at every step."""

    lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    shampoo_beta: float
    precond_freq: int
    spectral_mass: float
    rank_min: int
    rank_max: int

    @classmethod
    def from_group(cls, g: dict[str, Any]) -> Hyper:
        b1, b2 = g["betas"]
        rank_max = g["rank_max"]
        return cls(
            lr=float(g["lr"]),
            beta1=float(b1),
            beta2=float(b2),
            eps=float(g["eps"]),
            weight_decay=float(g["weight_decay"]),
            shampoo_beta=float(g["shampoo_beta"]),
            precond_freq=int(g["precond_freq"]),
            spectral_mass=float(g["spectral_mass"]),
            rank_min=int(g["rank_min"]),
            rank_max=int(rank_max) if rank_max is not None else 1 << 30,
        )


@dataclass(frozen=True)
class Config:
    """Optimizer-wide knobs that fix the shape of the state (same on every rank)."""

    quantize: tuple[str, ...] = ("m", "v", "factors", "bases")
    max_precond_dim: int = 4096
    min_precond_dim: int = 8
    full_factor_dim: float = 1024
    oversample: int = 16
    correction_bits: int = 8
    grad_release: bool = False
    stagger_refresh: bool = True
    refresh_lag: int = 0
    graft: str = "none"
    graft_rms: float = 0.2

    def q(self, piece: str) -> bool:
        """Is ``piece`` (``"m"``, ``"v"``, ``"factors"`` or ``"bases"``) stored compressed?"""
        return piece in self.quantize

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["quantize"] = list(self.quantize)
        return d


QUANTIZABLE = ("m", "v", "factors", "bases")


def quantize_pieces(quantize: bool | str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """``True`` -> every piece, ``False`` -> none, or a subset of :data:`QUANTIZABLE`."""
    if quantize is True:
        return QUANTIZABLE
    if quantize is False:
        return ()
    pieces = (quantize,) if isinstance(quantize, str) else tuple(quantize)
    bad = [p for p in pieces if p not in QUANTIZABLE]
    if bad:
        raise ValueError(f"quantize must be True, False or a subset of {QUANTIZABLE}; unknown {bad}")
    return tuple(p for p in QUANTIZABLE if p in pieces)


def validate_group(g: dict[str, Any]) -> None:
    """Clear errors for bad hyperparameters, naming the fix."""
    lr = g["lr"]
    if not (isinstance(lr, float | int) or hasattr(lr, "item")) or float(lr) < 0:
        raise ValueError(f"lr must be a non-negative number, got {lr!r}")
    b1, b2 = g["betas"]
    if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
        raise ValueError(f"betas must lie in [0, 1), got {g['betas']!r}")
    if not 0.0 <= g["shampoo_beta"] < 1.0:
        raise ValueError(f"shampoo_beta must lie in [0, 1), got {g['shampoo_beta']!r}")
    if g["eps"] <= 0:
        raise ValueError(f"eps must be positive, got {g['eps']!r}")
    if g["weight_decay"] < 0:
        raise ValueError(f"weight_decay must be >= 0, got {g['weight_decay']!r}")
    if int(g["precond_freq"]) < 1:
        raise ValueError(f"precond_freq must be >= 1 (refresh every N steps), got {g['precond_freq']!r}")
    if not 0.0 < g["spectral_mass"] <= 1.0:
        raise ValueError(f"spectral_mass must lie in (0, 1] (use 1.0 for full rank), got {g['spectral_mass']!r}")
    if int(g["rank_min"]) < 1:
        raise ValueError(f"rank_min must be >= 1, got {g['rank_min']!r}")
    if g["rank_max"] is not None and int(g["rank_max"]) < int(g["rank_min"]):
        raise ValueError(f"rank_max ({g['rank_max']}) must be >= rank_min ({g['rank_min']}) or None")
