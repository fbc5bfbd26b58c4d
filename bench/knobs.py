"""``--set MODULE.NAME=JSON`` for the GPU scripts: set a ``scao_dist.kernels`` module constant before any kernel
compiles (block sizes, ``common.HW_*`` switches), so one call can time a variant beside the defaults."""

from __future__ import annotations

import argparse
import importlib
import json
from typing import Any


def add_argument(ap: argparse.ArgumentParser) -> None:
    ap.add_argument(
        "--set", action="append", default=[], metavar="MODULE.NAME=JSON",
        help="set a scao_dist.kernels module constant first, e.g. lowrank.COMPLEMENT_MAXNREG=168 (repeatable)",
    )  # fmt: skip


def apply_settings(items: list[str]) -> dict[str, Any]:
    """``MODULE.NAME=JSON`` items set on ``scao_dist.kernels.MODULE`` (an existing constant only); a ``tl.constexpr``
    constant keeps its type. Returns what was set, for the results' JSON."""
    import triton.language as tl

    out = {}
    for item in items:
        key, _, value = item.partition("=")
        mod_name, _, attr = key.partition(".")
        mod = importlib.import_module(f"scao_dist.kernels.{mod_name}")
        if not attr or not hasattr(mod, attr):
            raise SystemExit(f"--set {item!r}: scao_dist.kernels.{mod_name} has no constant {attr!r}")
        out[key] = json.loads(value)
        old = getattr(mod, attr)
        setattr(mod, attr, tl.constexpr(out[key]) if isinstance(old, tl.constexpr) else out[key])
    return out
