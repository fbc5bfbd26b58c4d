"""Where scao_dist's ``step()`` spends its time: a per-phase breakdown taken from outside the library.

scao_dist has no profiler ranges of its own, so this module wraps a few of its internals for the
duration of a profiling window (``--profile-phases N`` in :mod:`bench.compare`) and restores them after.
Each wrapped call is timed twice: on the host (``perf_counter``) and on the device (CUDA events on the
current stream, read after the step is synchronised). Nested calls are handled: a phase's *exclusive*
time excludes the wrapped calls made inside it, so the exclusive times of all phases plus
``unattributed`` add up to the whole ``step()``.

The hook points are looked up by name and any that are missing are skipped with a note, so a change
of scao_dist's internals degrades the breakdown instead of breaking the benchmark. A hook that is
found but never called in the window shows 0 calls (e.g. the int8 moment kernels when
``quantize=False``: the fp32 moments are inline code and land in ``unattributed``).

Refresh work that scao_dist runs on its worker thread (``compute_refresh``) is off the step's critical
path; it is timed on the host (with the worker's stream synchronised, on CUDA) and reported apart, as
``refresh_compute (async)``.
"""

from __future__ import annotations

import functools
import importlib
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch

# (phase, module, attribute path): the phase a wrapped call is charged to; grouped in PHASE_GROUP.
HOOKS: list[tuple[str, str, str]] = [
    ("refresh_swap", "scao_dist.shard.refresh", "RefreshScheduler.step_boundary"),
    ("refresh_submit", "scao_dist.shard.refresh", "RefreshScheduler.submit"),
    ("refresh_compute", "scao_dist.groups", "KronGroup.compute_refresh"),
    ("refresh_apply", "scao_dist.groups", "KronGroup.apply_bases"),
    ("nonfinite_guard", "scao_dist.shard.comm", "Comm.nonfinite_ranks"),
    ("comm", "scao_dist.shard.comm", "Comm.reduce_grads"),
    ("comm", "scao_dist.shard.comm", "Comm.gather_params"),
    ("first_step", "scao_dist.groups", "KronGroup._first_step"),
    ("adam_1d", "scao_dist.groups", "AdamGroup.step"),
    ("gather_scatter", "scao_dist.groups", "_Group.gather"),
    ("gather_scatter", "scao_dist.groups", "_Group.gather_grads"),
    ("gather_scatter", "scao_dist.groups", "_Group.weights"),
    ("gather_scatter", "scao_dist.groups", "_Group.scatter_params"),
    ("gather_scatter", "scao_dist.groups", "_Group.select"),
    ("gather_scatter", "scao_dist.groups", "_Group.put_back"),
    ("factors", "scao_dist.groups", "KronGroup._update_factors"),
    ("rotation", "scao_dist.groups", "KronGroup.rotate"),
    ("rotation", "scao_dist.groups", "KronGroup.unrotate"),
    ("rotation", "scao_dist.groups", "KronGroup._stream_halves"),
    ("rotation", "scao_dist.groups", "KronGroup._core"),
    ("complement", "scao_dist.groups", "KronGroup._with_complement"),
    ("graft", "scao_dist.groups", "KronGroup._graft"),
    ("moments", "scao_dist.kernels", "ema_signed_"),
    ("moments", "scao_dist.kernels", "rotated_adam_"),
    ("apply", "scao_dist.kernels", "apply_update_"),
    ("apply", "scao_dist.kernels", "adamw_"),
]

# The five headings (factors, rotation, moments, refresh, apply) and the rest.
PHASE_GROUP = {
    "factors": "factors",
    "rotation": "rotation",
    "complement": "rotation",
    "moments": "moments",
    "graft": "moments",
    "adam_1d": "moments",
    "refresh_swap": "refresh",
    "refresh_submit": "refresh",
    "refresh_apply": "refresh",
    "refresh_compute": "refresh",
    "first_step": "refresh",
    "apply": "apply",
    "gather_scatter": "data movement",
    "comm": "data movement",
    "nonfinite_guard": "other",
    "unattributed": "other",
}


@dataclass
class _Range:
    phase: str
    t0: float
    ev0: Any = None
    t1: float = 0.0
    ev1: Any = None
    child_host: float = 0.0
    children: list[_Range] = field(default_factory=list)


class PhaseProfiler:
    """Install with :meth:`install`, bracket each ``opt.step()`` with :meth:`begin_step` / :meth:`end_step`."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.notes: list[str] = []
        self._originals: list[tuple[Any, str, Any]] = []
        self._installed: set[str] = set()
        self._local = threading.local()
        self._main = threading.main_thread()
        self._lock = threading.Lock()
        self._top: list[_Range] = []
        self.steps = 0
        self.host_ms: dict[str, float] = defaultdict(float)
        self.device_ms: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.step_host_ms = 0.0
        self.step_device_ms = 0.0
        self.async_ms = 0.0
        self.async_calls = 0
        self._step_ev: tuple[Any, Any] | None = None
        self._step_t0 = 0.0

    # ------------------------------------------------------------------------------ patching
    def install(self) -> list[str]:
        for phase, modname, path in HOOKS:
            try:
                owner = importlib.import_module(modname)
                *outer, attr = path.split(".")
                for name in outer:
                    owner = getattr(owner, name)
                orig = getattr(owner, attr)
            except (ImportError, AttributeError):
                self.notes.append(f"{phase}: {modname}.{path} not found, phase skipped")
                continue
            if not callable(orig):
                self.notes.append(f"{phase}: {modname}.{path} is not callable, phase skipped")
                continue
            self._originals.append((owner, attr, orig))
            self._installed.add(phase)
            setattr(owner, attr, self._wrap(phase, orig))
        return self.notes

    def uninstall(self) -> None:
        for owner, attr, orig in reversed(self._originals):
            setattr(owner, attr, orig)
        self._originals.clear()

    def _event(self) -> Any:
        if not self.cuda:
            return None
        ev = torch.cuda.Event(enable_timing=True)
        ev.record()
        return ev

    def _wrap(self, phase: str, fn: Any) -> Any:
        prof = self

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if threading.current_thread() is not prof._main:
                return prof._timed_async(fn, args, kwargs)
            stack = getattr(prof._local, "stack", None)
            if stack is None:
                return fn(*args, **kwargs)  # outside a profiled step
            r = _Range(phase, time.perf_counter(), prof._event())
            (stack[-1].children if stack else prof._top).append(r)
            stack.append(r)
            try:
                return fn(*args, **kwargs)
            finally:
                r.ev1 = prof._event()
                r.t1 = time.perf_counter()
                stack.pop()

        return wrapper

    def _timed_async(self, fn: Any, args: tuple, kwargs: dict) -> Any:
        if getattr(self._local, "busy", False):  # nested inside a timed worker call: counted there
            return fn(*args, **kwargs)
        self._local.busy = True
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            if self.cuda:
                torch.cuda.current_stream().synchronize()
            self._local.busy = False
            with self._lock:
                self.async_ms += (time.perf_counter() - t0) * 1e3
                self.async_calls += 1

    # --------------------------------------------------------------------------------- steps
    def begin_step(self) -> None:
        self._local.stack = []
        self._top = []
        self._step_t0 = time.perf_counter()
        self._step_ev = (self._event(), None)

    def end_step(self) -> None:
        """Close the step (the caller has not synchronised yet: this does)."""
        ev_end = self._event()
        t_end = time.perf_counter()
        if self.cuda:
            torch.cuda.synchronize()
        ev0 = self._step_ev[0] if self._step_ev else None
        self._step_ev = None
        self._local.stack = None
        total_host = (t_end - self._step_t0) * 1e3
        total_dev = ev0.elapsed_time(ev_end) if ev0 is not None else total_host
        self.step_host_ms += total_host
        self.step_device_ms += total_dev
        top_host = top_dev = 0.0
        for r in self._top:
            h, d = self._account(r)
            top_host += h
            top_dev += d
        self.host_ms["unattributed"] += max(total_host - top_host, 0.0)
        self.device_ms["unattributed"] += max(total_dev - top_dev, 0.0)
        self.steps += 1

    def _account(self, r: _Range) -> tuple[float, float]:
        """Charge ``r``'s exclusive time to its phase; return its inclusive (host, device) ms."""
        host = (r.t1 - r.t0) * 1e3
        dev = r.ev0.elapsed_time(r.ev1) if r.ev0 is not None else host
        ch = cd = 0.0
        for c in r.children:
            h, d = self._account(c)
            ch += h
            cd += d
        self.host_ms[r.phase] += max(host - ch, 0.0)
        self.device_ms[r.phase] += max(dev - cd, 0.0)
        self.calls[r.phase] += 1
        return host, dev

    # ------------------------------------------------------------------------------- summary
    def summary(self) -> dict[str, Any]:
        n = max(self.steps, 1)
        phases = {}
        for phase in [*dict.fromkeys(p for p, _, _ in HOOKS), "unattributed"]:
            if phase not in self._installed and phase != "unattributed":
                continue
            phases[phase] = {
                "group": PHASE_GROUP.get(phase, "other"),
                "device_ms": round(self.device_ms.get(phase, 0.0) / n, 4),
                "host_ms": round(self.host_ms.get(phase, 0.0) / n, 4),
                "calls_per_step": round(self.calls.get(phase, 0) / n, 3),
            }
        return {
            "steps": self.steps,
            "timer": "cuda events + perf_counter" if self.cuda else "perf_counter",
            "step_device_ms": round(self.step_device_ms / n, 4),
            "step_host_ms": round(self.step_host_ms / n, 4),
            "phases": phases,
            "refresh_compute_async_ms": round(self.async_ms / n, 4),
            "refresh_compute_async_calls_per_step": round(self.async_calls / n, 3),
            "notes": list(self.notes),
        }
