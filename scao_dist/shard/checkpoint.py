"""Sharded checkpoints through ``torch.distributed.checkpoint`` (DCP): save at N ranks, load at M.

Every rank writes only the blocks it owns, under world-size-independent keys
``optim.blocks.<global block id>.<tensor>``; the weights (replicated) and the small replicated
metadata are written once (DCP de-duplicates them). To load at another world size each rank
reads the checkpoint's metadata for the shapes of the blocks it owns under the *new* plan
(ranks are adaptive, so shapes differ per block) and asks DCP for just those.

Writes are atomic: everything goes to ``<path>.tmp`` first, and only after every rank finished
is it renamed into place (the previous checkpoint is moved aside first and removed last), so a
crash mid-save leaves the previous checkpoint loadable.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def save(path: str | os.PathLike, model: nn.Module, optimizer: Any, extra: dict[str, Any] | None = None) -> None:
    """Write ``model`` and SCAO ``optimizer`` state (each rank its own blocks) to directory ``path``."""
    path = Path(path)
    tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
    if _rank() == 0 and tmp.exists():
        shutil.rmtree(tmp)
    _barrier()
    blocks, meta = optimizer.state_dict_parts()
    state = {
        "model": model.state_dict(),
        "optim": {"blocks": {str(b): _flatten(st) for b, st in blocks.items()}, "meta": _json_tensor(meta)},
        "extra": _json_tensor(extra or {}),
    }
    dcp.save(state, checkpoint_id=str(tmp))
    _barrier()
    if _rank() == 0:
        if path.exists():
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
        os.replace(tmp, path)
        if old.exists():
            shutil.rmtree(old)
    _barrier()


def _resolve(path: Path) -> Path:
    if path.exists():
        return path
    old = path.with_name(path.name + ".old")
    if old.exists():  # a crash between the two renames of a save
        return old
    raise FileNotFoundError(f"no checkpoint at {path}")


def load(path: str | os.PathLike, model: nn.Module, optimizer: Any) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save` at any world size; returns its ``extra``."""
    path = _resolve(Path(path))
    reader = dcp.FileSystemReader(str(path))
    md = reader.read_metadata().state_dict_metadata
    owned = optimizer.owned_blocks()
    blocks: dict[str, dict[str, Any]] = {}
    for fqn, meta in md.items():
        parts = fqn.split(".", 3)  # optim.blocks.<id>.<flat key of the block>
        if parts[:2] != ["optim", "blocks"] or int(parts[2]) not in owned:
            continue
        blocks.setdefault(parts[2], {})[parts[3]] = torch.empty(meta.size, dtype=meta.properties.dtype)
    state = {
        "model": model.state_dict(),
        "optim": {"blocks": blocks, "meta": torch.empty(md["optim.meta"].size, dtype=torch.uint8)},
        "extra": torch.empty(md["extra"].size, dtype=torch.uint8),
    }
    dcp.load(state, checkpoint_id=str(path))
    model.load_state_dict(state["model"])
    optimizer.load_state_dict_parts(
        {int(b): _unflatten(st) for b, st in blocks.items()}, _from_json_tensor(state["optim"]["meta"])
    )
    return _from_json_tensor(state["extra"])


def _flatten(st: dict[str, Any], prefix: str = "") -> dict[str, torch.Tensor]:
    """One level of keys ("/" for nesting; tensor names themselves contain dots)."""
    out: dict[str, torch.Tensor] = {}
    for k, v in st.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _unflatten(flat: dict[str, torch.Tensor]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in flat.items():
        *path, leaf = k.split("/")
        node = out
        for p in path:
            node = node.setdefault(p, {})
        node[leaf] = v
    return out


def _json_tensor(obj: Any) -> torch.Tensor:
    """Small replicated metadata as a uint8 tensor of JSON (tensors only in the checkpoint)."""
    return torch.tensor(list(json.dumps(obj).encode()), dtype=torch.uint8)


def _from_json_tensor(t: torch.Tensor) -> Any:
    return json.loads(bytes(t.tolist()).decode())
