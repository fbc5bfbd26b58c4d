"""The optimizers the benchmark compares, built the way a user would build them, and what each one holds.

Names (the ``--optimizers`` flag of :mod:`bench.compare`):

* ``adamw``        torch.optim.AdamW (``fused=True`` on CUDA), fp32 weights;
* ``muon``         torch.optim.Muon on the 2-D weights inside the transformer blocks
                   (``adjust_lr_fn="match_rms_adamw"``, so it takes AdamW-scale lrs) plus torch AdamW on the
                   embeddings, the output head and every 1-D parameter, wrapped as one optimizer;
* ``flash``        flashoptim 0.1.4 ``FlashAdamW`` on bf16 weights (``cast_model``), int8 states and 8-bit
                   error-correction bits (its defaults) — CUDA only; on CPU it runs unfused, unquantised and
                   without correction bits (its only CPU mode), and the run says so;
* ``soap``         heavyball 3.2.1 ``SOAP`` (precondition_frequency 10, ``heavyball.utils.compile_mode =
                   "default"`` on CUDA, no compilation on CPU);
* ``scao024``      the seed package scao 0.2.4 ``SCAO`` (its defaults); ``scao024_int8`` with ``use_int8_ema``;
* ``scao``         scao_dist ``SCAO`` with its defaults, on bf16 weights (its error-correction bits replace
                   the fp32 master copy: DESIGN.md section 2);
* ``scao_soap``    scao_dist ``SCAO(quantize=False, rank="full", graft="none")`` on fp32 weights: plain SOAP;
* variants         ``--scao-variant NAME=JSON`` adds scao_dist runs with other knobs (see :func:`make_spec`).

Every optimizer gets the same eps / weight decay (``--eps``, ``--weight-decay``) and its own default betas
unless ``--betas b1,b2`` forces one pair on all (the runs record ``betas_used``), one
param group over all parameters (the drop-in use), unless ``--opt-kwargs`` overrides them per optimizer.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

PEERS = ("adamw", "muon", "flash", "soap", "scao024", "scao024_int8")
OURS = ("scao", "scao_soap")
ALL = PEERS + OURS

# Best lrs measured on the 43M model at 1500 steps (DESIGN.md section 4); scao 0.2.4 and scao_dist have
# no sweep there yet (1e-3 is the lr the anchor table was measured at).
DEFAULT_BEST_LR: dict[str, float] = {
    "adamw": 5e-4,
    "muon": 2e-3,
    "flash": 5e-4,
    "soap": 1e-3,
    "scao024": 1e-3,
    "scao024_int8": 1e-3,
    "scao": 1e-3,
    "scao_soap": 1e-3,
}

# Log grids (factor 2) around each one's best lr in DESIGN.md section 4.
DEFAULT_SWEEP_LRS: dict[str, list[float]] = {
    "adamw": [2.5e-4, 5e-4, 1e-3, 2e-3],
    "muon": [1e-3, 2e-3, 4e-3, 8e-3],
    "flash": [2.5e-4, 5e-4, 1e-3, 2e-3],
    "soap": [2.5e-4, 5e-4, 1e-3, 2e-3],
    "scao024": [2.5e-4, 5e-4, 1e-3, 2e-3],
    "scao024_int8": [2.5e-4, 5e-4, 1e-3, 2e-3],
    "scao": [5e-4, 1e-3, 2e-3, 4e-3],
    "scao_soap": [2.5e-4, 5e-4, 1e-3, 2e-3],
}

# Step times (ms) to plan a run before it starts: H100 numbers from DESIGN.md section 4 where they exist,
# guesses (marked) where not; "tiny" is this CPU-only dev machine's order of magnitude.
PRIOR_MS: dict[str, dict[str, float]] = {
    # small: scao and scao_soap are guesses; large: scao, scao_soap and scao024 are guesses
    "small": dict(adamw=12, flash=16, muon=28, soap=34, scao024=45, scao024_int8=47, scao=30, scao_soap=45),
    "large": dict(adamw=29, flash=28.4, muon=68, soap=158.5, scao024=55, scao024_int8=50.3, scao=45, scao_soap=220),
    "tiny": dict(adamw=60, flash=80, muon=90, soap=150, scao024=200, scao024_int8=220, scao=150, scao_soap=150),
}
# One-off costs per run on top of the steps (seconds): model build, first-step compilation.
PRIOR_SETUP_S: dict[str, float] = {"soap": 45.0}


class NotInstalledError(RuntimeError):
    """The optimizer's package is not importable here (the run is reported, not failed)."""


@dataclass
class Spec:
    """How to build one named optimizer."""

    name: str
    kind: str  # adamw | muon | flash | soap | scao024 | scao
    kwargs: dict[str, Any] = field(default_factory=dict)
    weights: str = "fp32"  # parameter dtype the optimizer trains: fp32 | bf16
    family: str = "peer"  # peer | ours


@dataclass
class Built:
    opt: Any
    notes: list[str] = field(default_factory=list)
    package: str = ""
    version: str = ""


def make_spec(name: str, variants: dict[str, dict[str, Any]] | None = None,
              overrides: dict[str, dict[str, Any]] | None = None) -> Spec:  # fmt: skip
    """The :class:`Spec` for ``name``.

    ``variants`` maps extra names to scao_dist kwargs applied on top of the default ``scao`` (the key
    ``"weights"`` — ``"bf16"`` or ``"fp32"`` — picks the parameter dtype; ``"base": "scao_soap"`` starts from
    the plain-SOAP setting instead). ``overrides`` maps any name to kwargs merged last.
    """
    variants = variants or {}
    if name == "adamw":
        spec = Spec(name, "adamw")
    elif name == "muon":
        spec = Spec(name, "muon")
    elif name == "flash":
        spec = Spec(name, "flash", weights="bf16")
    elif name == "soap":
        spec = Spec(name, "soap", kwargs={"precondition_frequency": 10})
    elif name == "scao024":
        spec = Spec(name, "scao024")
    elif name == "scao024_int8":
        spec = Spec(name, "scao024", kwargs={"use_int8_ema": True})
    elif name == "scao":
        spec = Spec(name, "scao", weights="bf16", family="ours")
    elif name == "scao_soap":
        spec = Spec(name, "scao", kwargs={"quantize": False, "rank": "full", "graft": "none"}, family="ours")
    elif name in variants:
        kw = dict(variants[name])
        base = make_spec(kw.pop("base", "scao"))
        spec = Spec(name, "scao", kwargs={**base.kwargs}, weights=base.weights, family="ours")
        spec.weights = kw.pop("weights", spec.weights)
        spec.kwargs.update(kw)
    else:
        known = ", ".join(ALL + tuple(variants))
        raise ValueError(f"unknown optimizer {name!r}; known: {known} (add scao_dist variants with --scao-variant)")
    extra = dict((overrides or {}).get(name, {}))
    spec.weights = extra.pop("weights", spec.weights)
    spec.kwargs.update(extra)
    if spec.weights not in ("fp32", "bf16"):
        raise ValueError(f"{name}: weights must be 'fp32' or 'bf16', got {spec.weights!r}")
    return spec


def _import(module: str, dist: str) -> tuple[Any, str]:
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise NotInstalledError(f"{dist} is not installed ({e})") from e
    try:
        version = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        version = getattr(mod, "__version__", "?")
    return mod, version


def prepare_model(spec: Spec, model: nn.Module) -> None:
    """Cast the (CPU, fp32) model to the dtype this optimizer trains, before it moves to the device."""
    if spec.weights != "bf16":
        return
    if spec.kind == "flash":
        flashoptim, _ = _import("flashoptim", "flashoptim")
        flashoptim.cast_model(model, dtype=torch.bfloat16)
    else:
        model.to(torch.bfloat16)


def muon_param_split(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(2-D weights inside the transformer blocks, everything else) — the usual Muon recipe."""
    hidden, rest = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (hidden if p.ndim == 2 and name.startswith("blocks.") else rest).append(p)
    return hidden, rest


class MuonWithAdamW:
    """torch Muon on the hidden 2-D weights + torch AdamW on the rest, driven as one optimizer."""

    def __init__(self, muon: torch.optim.Optimizer, adamw: torch.optim.Optimizer) -> None:
        self.muon, self.adamw = muon, adamw
        self.optimizers = (muon, adamw)

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.muon.param_groups + self.adamw.param_groups

    @property
    def state(self) -> dict[Any, Any]:
        return {**self.muon.state, **self.adamw.state}

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for o in self.optimizers:
            o.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}


def build(spec: Spec, model: nn.Module, lr: float, *, betas: tuple[float, float] | None, eps: float,
          weight_decay: float, device: torch.device, heavyball_compile: str | None = "default") -> Built:  # fmt: skip
    """Build the optimizer of ``spec`` for ``model`` (already prepared and on ``device``)."""
    cuda = device.type == "cuda"
    common = dict(lr=lr, eps=eps, weight_decay=weight_decay)
    if betas is not None:  # else each optimizer keeps its own default betas
        common["betas"] = tuple(betas)
    params = [p for p in model.parameters() if p.requires_grad]
    kw = dict(spec.kwargs)
    if spec.kind == "adamw":
        opt = torch.optim.AdamW(params, **{**common, "fused": cuda, **kw})
        return Built(opt, package="torch", version=torch.__version__)
    if spec.kind == "muon":
        if not hasattr(torch.optim, "Muon"):
            raise NotInstalledError(f"torch {torch.__version__} has no torch.optim.Muon (added in 2.9)")
        hidden, rest = muon_param_split(model)
        adamw_kw = {k[len("adamw_"):]: v for k, v in kw.items() if k.startswith("adamw_")}  # fmt: skip
        muon_kw = {k: v for k, v in kw.items() if not k.startswith("adamw_")}
        muon = torch.optim.Muon(
            hidden, **{"lr": lr, "weight_decay": weight_decay, "adjust_lr_fn": "match_rms_adamw", **muon_kw}
        )
        adamw = torch.optim.AdamW(rest, **{**common, "fused": cuda, **adamw_kw})
        note = f"Muon on {sum(p.numel() for p in hidden):,} params, AdamW on {sum(p.numel() for p in rest):,}"
        return Built(MuonWithAdamW(muon, adamw), notes=[note], package="torch", version=torch.__version__)
    if spec.kind == "flash":
        flashoptim, version = _import("flashoptim", "flashoptim")
        notes = []
        if not cuda:  # FlashOptimizer raises NotImplementedError for these three without CUDA
            kw = {"quantize": False, "master_weight_bits": None, "fused": False, **kw}
            notes.append("CPU: flashoptim's only CPU mode (fp32-free but unquantised states, no correction bits)")
        opt = flashoptim.FlashAdamW(params, **{**common, **kw})
        return Built(opt, notes=notes, package="flashoptim", version=version)
    if spec.kind == "soap":
        heavyball, version = _import("heavyball", "heavyball")
        importlib.import_module("heavyball.utils").compile_mode = heavyball_compile if cuda else None
        opt = heavyball.SOAP(params, **{**common, "warmup_steps": 0, **kw})
        notes = [f"heavyball.utils.compile_mode = {heavyball_compile if cuda else None!r}"]
        return Built(opt, notes=notes, package="heavyball", version=version)
    if spec.kind == "scao024":
        scao, version = _import("scao", "scao")
        opt = scao.SCAO(params, **{**common, **kw})
        return Built(opt, package="scao", version=version)
    if spec.kind == "scao":
        import scao_dist

        opt = scao_dist.SCAO(params, **{**common, **kw})
        return Built(opt, package="scao_dist", version=scao_dist.__version__)
    raise ValueError(f"unknown optimizer kind {spec.kind!r}")


def is_scao_dist(opt: Any) -> bool:
    try:
        import scao_dist
    except ImportError:
        return False
    return isinstance(opt, scao_dist.SCAO)


def scao_dist_extras(opt: Any) -> dict[str, Any]:
    """scao_dist's counters and the ranks its bases keep (read defensively: internals may change)."""
    out: dict[str, Any] = {"counters": {k: int(v) for k, v in dict(getattr(opt, "counters", {})).items()}}
    ranks = []
    for grp in getattr(opt, "groups", []):
        for side in getattr(grp, "sides", ()):
            if getattr(side, "rotated", False) and getattr(side, "ranks", None):
                ranks.append({"side": getattr(side, "name", "?"), "mode": getattr(side, "mode", "?"),
                              "d": int(side.d), "blocks": len(side.ranks),
                              "mean_rank": round(sum(side.ranks) / len(side.ranks), 1)})  # fmt: skip
    out["ranks"] = ranks
    return out


def close(opt: Any) -> None:
    """Stop worker threads an optimizer may own (scao_dist's refresh worker)."""
    refresher = getattr(opt, "refresher", None)
    if refresher is not None and hasattr(refresher, "close"):
        refresher.close()


# ------------------------------------------------------------------------------------------- state bytes
_WALK_MODULES = ("flashoptim", "heavyball", "scao", "scao_dist", "bench")


def _storage_key(t: torch.Tensor) -> tuple[str, int] | None:
    if t.device.type == "meta":
        return None
    try:
        return (str(t.device), t.untyped_storage().data_ptr())
    except (RuntimeError, NotImplementedError):
        return None


def _storage_bytes(t: torch.Tensor) -> int:
    try:
        return t.untyped_storage().nbytes()
    except (RuntimeError, NotImplementedError):
        return t.numel() * t.element_size()


class _Walker:
    """Every distinct tensor storage reachable from some roots, minus the model's own weights and grads.

    Reaches into dicts, lists, tuples, sets and the attributes of objects defined by the optimizer
    packages (``_WALK_MODULES``: e.g. flashoptim's quantised-tensor holders, scao 0.2.4's preconditioner
    objects kept in ``opt.state``). A storage is counted once, whole, however many views point at it.
    """

    def __init__(self, exclude: set[tuple[str, int]]) -> None:
        self.exclude = exclude
        self.seen_storage: set[tuple[str, int]] = set()
        self.seen_obj: set[int] = set()
        self._alive: list[Any] = []  # ids are only unique while the object lives (temporary dicts!)

    def walk(self, obj: Any, depth: int = 0) -> int:
        if depth > 12 or id(obj) in self.seen_obj:
            return 0
        if isinstance(obj, torch.Tensor):
            self.seen_obj.add(id(obj))
            key = _storage_key(obj)
            if key is None or key in self.exclude or key in self.seen_storage:
                return 0
            self.seen_storage.add(key)
            return _storage_bytes(obj)
        if isinstance(obj, str | bytes | int | float | bool | type(None) | nn.Module):
            return 0
        self.seen_obj.add(id(obj))
        self._alive.append(obj)
        if isinstance(obj, dict):
            return sum(self.walk(k, depth + 1) + self.walk(v, depth + 1) for k, v in obj.items())
        if isinstance(obj, list | tuple | set | frozenset):
            return sum(self.walk(v, depth + 1) for v in obj)
        mod = type(obj).__module__ or ""
        if mod.split(".")[0] in _WALK_MODULES and hasattr(obj, "__dict__"):
            return sum(self.walk(v, depth + 1) for v in vars(obj).values())
        return 0


def state_bytes(opt: Any, model: nn.Module) -> dict[str, Any]:
    """Everything ``opt`` holds across steps, in bytes, by where it was found.

    * ``opt.state`` (recursively; for FlashAdamW that includes its int8 codes, scales and error-correction
      bits, held in ``_MaybeQuantizedTensor`` objects; for scao 0.2.4 its preconditioner objects);
    * tensors in the param groups (other than the params themselves);
    * tensors hanging off the optimizer object's own attributes (buffers kept outside ``opt.state``, e.g.
      scao 0.2.4's sparse filters or lookahead copies; heavyball's per-group caches).
    The model's weights and gradients are excluded (by storage). For scao_dist the total is
    :func:`scao_dist.memory_report` (by piece), and the walk over its attributes is kept as a cross-check.
    """
    exclude: set[tuple[str, int]] = set()
    for p in model.parameters():
        for t in (p, p.grad):
            if t is not None and (key := _storage_key(t)) is not None:
                exclude.add(key)
    subs = getattr(opt, "optimizers", None) or (opt,)
    w = _Walker(exclude)
    found = {"state": 0, "param_groups": 0, "attributes": 0}
    for o in subs:
        found["state"] += w.walk(dict(o.state))
    for o in subs:
        found["param_groups"] += sum(w.walk({k: v for k, v in g.items() if k != "params"}) for g in o.param_groups)
    for o in subs:
        attrs = {k: v for k, v in vars(o).items() if k not in ("state", "param_groups", "defaults")}
        found["attributes"] += w.walk(attrs)
    out: dict[str, Any] = {"walk": found, "walk_total": sum(found.values())}
    if is_scao_dist(opt):
        from scao_dist import memory_report

        rep = memory_report(opt)
        out["pieces"] = dict(rep.bytes)
        out["total"] = rep.total
        out["source"] = "scao_dist.memory_report"
    else:
        out["total"] = out["walk_total"]
        out["source"] = "walk"
    return out


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def fmt_lr(lr: float) -> str:
    """``5e-04`` / ``2.5e-04`` style: short, and safe in file names."""
    mant, exp = f"{lr:.6e}".split("e")
    mant = mant.rstrip("0").rstrip(".")
    return f"{mant}e{int(exp):+03d}".replace("+", "")
