"""The wrapper around ``SCAO.step`` that runs torch's optimizer-step hooks, at less host cost.

``torch.optim.Optimizer`` wraps every subclass's ``step`` (``Optimizer.profile_hook_step``): it runs
the global and per-optimizer pre-hooks (a pre-hook may return new ``(args, kwargs)``), the step,
``_optimizer_step_code`` (the profiler's entry point) and the post-hooks, all inside
``record_function("Optimizer.step#<Class>.step")``. Entering and leaving that ``record_function``
are two dispatcher calls whether a profiler runs or not: about 20 us of host time a step on a
2-core CPU and several times that on a GPU machine's host, spent before the step's first kernel.
:func:`hooked_step` does the same things in the same order and opens the ``record_function`` only
while the autograd profiler is on, so a profile still shows the step under the same name. The
wrapped function carries ``hooked = True``, the mark that tells torch not to wrap it again.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from itertools import chain
from typing import Any, TypeVar

import torch
from torch.optim import optimizer as _torch_optimizer

F = TypeVar("F", bound=Callable[..., Any])


def _global_hooks(name: str) -> dict:
    """torch's registry of global optimizer hooks (``register_optimizer_step_pre_hook`` and the
    post-hook one); empty if a torch version keeps it elsewhere."""
    return getattr(_torch_optimizer, name, {})


def _profiling() -> bool:
    """Is an autograd/kineto profiler recording (the flag torch's own ``record_function`` consults)?"""
    return torch._C._autograd._profiler_enabled()


def hooked_step(func: F) -> F:
    """``func`` (an optimizer's ``step``) wrapped as torch wraps it: pre-hooks (global, then this
    optimizer's; one that returns a pair replaces the arguments), the step, ``_optimizer_step_code``,
    post-hooks (this optimizer's, then global); inside ``record_function`` only while profiling."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if _profiling():
            with torch.autograd.profiler.record_function(f"Optimizer.step#{type(args[0]).__name__}.step"):
                return _run(func, args, kwargs)
        return _run(func, args, kwargs)

    wrapper.hooked = True  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]


def _run(func: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
    self = args[0]
    pre = self._optimizer_step_pre_hooks
    global_pre = _global_hooks("_global_optimizer_pre_hooks")
    if pre or global_pre:
        for hook in chain(global_pre.values(), pre.values()):
            result = hook(self, args, kwargs)
            if result is None:
                continue
            if not (isinstance(result, tuple) and len(result) == 2):
                raise RuntimeError(f"{func} must return None or a tuple of (new_args, new_kwargs), but got {result}.")
            args, kwargs = result
    out = func(*args, **kwargs)
    self._optimizer_step_code()
    post = self._optimizer_step_post_hooks
    global_post = _global_hooks("_global_optimizer_post_hooks")
    if post or global_post:
        for hook in chain(post.values(), global_post.values()):
            hook(self, args, kwargs)
    return out
