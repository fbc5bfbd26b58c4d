"""SCAO from a DeepSpeed config: ``"optimizer": {"type": "SCAO", "params": {...}}``.

Registration, one line (``import scao_dist`` does it; importing this module does it too)::

    import scao_dist.integrations.deepspeed  # makes torch.optim.SCAO exist; deepspeed is not imported

DeepSpeed builds a config optimizer it has no class for as ``getattr(torch.optim, type)(params,
**params_from_config)`` (``DeepSpeedEngine._configure_basic_optimizer``), and its sanity check
accepts any ``type`` that ``torch.optim`` has. So :func:`register` sets ``torch.optim.SCAO`` to
:class:`DeepSpeedSCAO`; nothing in DeepSpeed is patched. Then, with ``launch/ds_config.json``::

    model = GPT(GPTConfig.small()).to(torch.bfloat16)  # bf16 weights: SCAO keeps the master bits
    engine, opt, _, sched = deepspeed.initialize(model=model, model_parameters=groups, config="ds_config.json")

The config that keeps SCAO's memory and math (what DeepSpeed 0.19.8 does, read from its source):

* ``"zero_optimization": {"stage": 0}``. ZeRO-1/2 hand the optimizer flat 1-D fp32 partitions of
  all parameters: 2-D shapes, and so Kronecker factors, are gone, and the fp32 partitions are
  master copies SCAO does not need. SCAO already shards its states over the data-parallel
  ranks (ZeRO-1-like) by itself. Stage >= 1 is refused with an error saying so.
* ``"bf16": {"enabled": false}`` and the model cast to bf16 **before** ``deepspeed.initialize``
  (``model.to(torch.bfloat16)``). With ``bf16.enabled`` at stage 0, DeepSpeed wraps the optimizer
  in its mixed-precision optimizer, which keeps fp32 copies of every weight and hands SCAO those
  instead of the model's own (+6 bytes/param); SCAO's bf16 path keeps ≈24-bit master weights
  itself (bf16 + int8 correction bits). ``bf16``/``fp16`` enabled is refused with an error saying
  this (:func:`initialize` below rewrites such a config for you). Inputs stay as they are (token
  ids); a model taking float inputs must get bf16 ones.
* ``gradient_accumulation_steps``, ``gradient_clipping`` (DeepSpeed clips the averaged gradient
  with ``clip_grad_norm_`` before ``optimizer.step()``), and DeepSpeed's schedulers (``WarmupLR``,
  ``WarmupDecayLR``, ``WarmupCosineLR``, ...) work unchanged: SCAO reads each group's ``lr`` at
  every step.
* ``engine.save_checkpoint``/``load_checkpoint``: at stage 0 DeepSpeed writes rank 0's
  ``optimizer.state_dict()`` and loads that file on every rank. SCAO's ``state_dict`` is the full
  state, gathered from its shards on every rank, and ``load_state_dict`` takes a full state at any
  world size, so this resumes exactly (also onto a different number of ranks).
* DeepSpeed all-reduces the gradients itself, so SCAO is built with ``grad_sync="external"`` (it
  only all-gathers the updated weights of the blocks each rank owns). :class:`DeepSpeedSCAO`
  sets that when DeepSpeed constructs it; an explicit ``"grad_sync"`` in the config params wins.
* With ``bf16.enabled`` false DeepSpeed all-reduces in fp32 (its default for a model it thinks is
  fp32): set ``"communication_data_type": "bf16"`` for half the traffic.
* Not with ``grad_release=True``: DeepSpeed reduces and clips the gradients after the backward
  pass, so they cannot be consumed inside it.
"""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from ..optim import SCAO
from ..step_hooks import hooked_step

ZERO_MESSAGE = (
    "SCAO under DeepSpeed needs ZeRO stage 0, got stage {stage}: ZeRO-1/2/3 hand the optimizer flat 1-D "
    'fp32 partitions, so the 2-D weight shapes SCAO preconditions are gone. Set "zero_optimization": '
    '{{"stage": 0}} — SCAO shards its own states over the data-parallel ranks (ZeRO-1-like), so stage 0 '
    "loses no memory to replication."
)
MIXED_PRECISION_MESSAGE = (
    "SCAO under DeepSpeed: {mode}.enabled=true makes DeepSpeed wrap the optimizer in its mixed-precision "
    "optimizer, which keeps fp32 copies of every weight and hands SCAO those instead of the model's own. "
    'SCAO keeps ~24-bit master weights itself from bf16 weights: set "{mode}": {{"enabled": false}} and '
    "cast the model with model.to(torch.bfloat16) before deepspeed.initialize (or call "
    "scao_dist.integrations.deepspeed.initialize, which does both)."
)
WRAPPED_MESSAGE = (
    "SCAO's param_groups were replaced after it was built (DeepSpeed's ZeRO or bf16/fp16 optimizer wraps "
    "it and hands it flat or fp32 copies of the weights), so SCAO would update tensors the model does not "
    'use. Use "zero_optimization": {"stage": 0} and "bf16": {"enabled": false} with a model cast to '
    "bf16 before deepspeed.initialize."
)


def _calling_engine() -> Any:
    """The ``DeepSpeedEngine`` constructing this optimizer from a config, if one is on the stack."""
    frame = sys._getframe(2)
    for _ in range(16):
        if frame is None:
            return None
        obj = frame.f_locals.get("self")
        if obj is not None and any(c.__name__ == "DeepSpeedEngine" for c in type(obj).__mro__):
            return obj
        frame = frame.f_back
    return None


def check_engine(engine: Any, grad_release: bool = False) -> None:
    """Raise, naming the config to set, when an engine's settings would break SCAO."""
    stage = int(engine.zero_optimization_stage())
    if stage >= 1:
        raise ValueError(ZERO_MESSAGE.format(stage=stage))
    for mode, on in (("bf16", engine.bfloat16_enabled()), ("fp16", engine.fp16_enabled())):
        if on:
            raise ValueError(MIXED_PRECISION_MESSAGE.format(mode=mode))
    if grad_release:
        raise ValueError(
            "SCAO(grad_release=True) cannot run under DeepSpeed: DeepSpeed averages and clips the gradients "
            "after the backward pass, and grad_release consumes them inside it. Drop grad_release."
        )


def _drop_empty_groups(params: Iterable[Tensor] | Iterable[dict[str, Any]]) -> list:
    """DeepSpeed deletes empty param groups after construction, which would shift group indices."""
    items = list(params)
    if items and isinstance(items[0], dict):
        items = [g for g in items if len(list(g["params"])) > 0]
    return items


class DeepSpeedSCAO(SCAO):
    """:class:`~scao_dist.SCAO` as DeepSpeed builds it from ``"type": "SCAO"`` (``torch.optim.SCAO``).

    The same optimizer and the same state dict; in addition, when DeepSpeed constructs it, it checks
    the engine's settings (ZeRO stage 0, bf16/fp16 disabled, see the module docstring), defaults to
    ``grad_sync="external"`` (DeepSpeed averaged the gradients already), and refuses to step if a
    wrapper replaced its parameters.
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]], *args: Any, **kwargs: Any) -> None:
        engine = _calling_engine()
        if engine is not None:
            check_engine(engine, grad_release=bool(kwargs.get("grad_release", False)))
            kwargs.setdefault("grad_sync", "external")
        if "betas" in kwargs:
            kwargs["betas"] = tuple(kwargs["betas"])  # JSON lists
        super().__init__(_drop_empty_groups(params), *args, **kwargs)
        self._built_ids = self._param_ids()

    def _param_ids(self) -> list[int]:
        return [id(p) for g in self.param_groups for p in g["params"]]

    @hooked_step
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        """:meth:`SCAO.step`, refused if a wrapper replaced the parameters; torch's step hooks run once."""
        if self._param_ids() != self._built_ids:
            raise RuntimeError(WRAPPED_MESSAGE)
        return self._step_no_grad(closure)


def register() -> None:
    """Make ``torch.optim.SCAO`` exist, so DeepSpeed accepts ``"type": "SCAO"`` (idempotent, cheap)."""
    if getattr(torch.optim, "SCAO", None) is not DeepSpeedSCAO:
        torch.optim.SCAO = DeepSpeedSCAO  # type: ignore[attr-defined]


def scao_config(config: dict[str, Any] | str) -> tuple[dict[str, Any], torch.dtype | None]:
    """A copy of a DeepSpeed config fixed for SCAO, and the dtype to cast the model to (or None).

    ``bf16.enabled`` becomes false and the returned dtype is ``torch.bfloat16`` (cast the model
    yourself before ``deepspeed.initialize``); a missing ``zero_optimization`` becomes stage 0.
    A ZeRO stage >= 1 is left as is (and refused when SCAO is built). Configs whose optimizer
    is not SCAO come back unchanged.
    """
    if isinstance(config, str):
        with open(config) as fh:
            config = json.load(fh)
    cfg = copy.deepcopy(config)
    if str(cfg.get("optimizer", {}).get("type", "")).lower() != "scao":
        return cfg, None
    cfg.setdefault("zero_optimization", {"stage": 0})
    dtype = None
    for mode in ("bf16", "bfloat16"):
        if cfg.get(mode, {}).get("enabled", False):
            cfg[mode]["enabled"] = False
            dtype = torch.bfloat16
    if cfg.get("fp16", {}).get("enabled", False):
        raise ValueError('SCAO trains bf16 or fp32 weights, not fp16: use "bf16" instead of "fp16"')
    return cfg, dtype


def initialize(model: torch.nn.Module, config: dict[str, Any] | str, **kwargs: Any) -> tuple:
    """``deepspeed.initialize`` with :func:`scao_config` applied (casts ``model`` to bf16 if asked).

    Same arguments and return value as ``deepspeed.initialize(model=..., config=..., **kwargs)``.
    """
    import deepspeed

    register()
    cfg, dtype = scao_config(config)
    if dtype is not None:
        model.to(dtype)
    return deepspeed.initialize(model=model, config=cfg, **kwargs)


register()
