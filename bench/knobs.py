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


def set_constant(key: str, value: Any) -> Any:
    """Set the ``scao_dist.kernels`` module constant ``key`` (``MODULE.NAME``, an existing one only) to ``value``; a
    ``tl.constexpr`` constant keeps its type. Returns the value it held (to put back with ``setattr``)."""
    import triton.language as tl

    mod_name, _, attr = key.partition(".")
    mod = importlib.import_module(f"scao_dist.kernels.{mod_name}")
    if not attr or not hasattr(mod, attr):
        raise SystemExit(f"{key!r}: scao_dist.kernels.{mod_name} has no constant {attr!r}")
    old = getattr(mod, attr)
    setattr(mod, attr, tl.constexpr(value) if isinstance(old, tl.constexpr) else value)
    return old


def apply_settings(items: list[str]) -> dict[str, Any]:
    """``MODULE.NAME=JSON`` items set by :func:`set_constant`. Returns what was set, for the results' JSON."""
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        out[key] = json.loads(value)
        set_constant(key, out[key])
    return out
