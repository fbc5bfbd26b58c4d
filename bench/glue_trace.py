"""Which lines of scao_dist launch the torch kernels of a captured step: the step's body run eagerly.

A captured step replays its groups' graphs, so a profile of it names kernels but not the code that
launched them. This script runs the same body without graphs (the device-input path of
:mod:`scao_dist.capture`, what ``bench.capture_check`` calls ``inputs``: the same operators in the same
order), with refreshes off after the warm-up as ``bench.step_profile``'s ``scao_norefresh``, and lists
torch's operators by GPU time per step with the scao_dist lines on their Python stacks. ::

    python -m bench.glue_trace --size large --out $OUT/glue.json      # CUDA
    python -m bench.glue_trace --size tiny --steps 2 --out /tmp/g.json   # CPU smoke (CPU time instead)
"""

from __future__ import annotations

import argparse
import json
import tempfile
from typing import Any

import torch

from bench.step_profile import DEVICE_CATS, RUNTIME_CATS, _corr, _grads, _model, _sync, _timed_steps
from scao_dist import SCAO
from scao_dist.capture import GroupGraphs


def _ours(stack: list[str], depth: int) -> list[str]:
    """The innermost ``depth`` frames of scao_dist's own files (paths from the package on)."""
    out = [f[f.index("scao_dist/") :] for f in stack if "scao_dist/" in f]
    return out[:depth]


STEP = "scao.step"
"""The annotation around each profiled ``step()``."""


def attribute(trace: dict[str, Any], depth: int, gpu: bool) -> list[tuple[float, str, list[str]]]:
    """``(us, name, scao_dist frames)`` per unit of work started inside the :data:`STEP` annotations of a
    Chrome trace: each GPU kernel or copy (``gpu``) with the frames open on the host thread when its launch
    was made (matched by correlation id), else each torch operator with those open at its start. Frames
    are the profiler's ``python_function`` events (``with_stack=True``), innermost first."""
    ev = [e for e in trace.get("traceEvents", []) if e.get("ph") == "X"]
    frames = sorted((e for e in ev if e.get("cat") == "python_function"), key=lambda e: (e["ts"], -e.get("dur", 0)))
    if gpu:
        runtime = {_corr(e): e for e in ev if e.get("cat") in RUNTIME_CATS and _corr(e) is not None}
        work = [(runtime[_corr(e)], e) for e in ev if e.get("cat") in DEVICE_CATS and _corr(e) in runtime]
    else:
        work = [(e, e) for e in ev if e.get("cat") == "cpu_op" and str(e.get("name", "")).startswith("aten::")]
    steps = [
        (e["ts"], e["ts"] + e.get("dur", 0)) for e in ev if e.get("name") == STEP and e.get("cat") == "user_annotation"
    ]
    work = sorted((hw for hw in work if any(a <= hw[0]["ts"] <= b for a, b in steps)), key=lambda hw: hw[0]["ts"])
    out: list[tuple[float, str, list[str]]] = []
    open_: list[dict[str, Any]] = []
    i = 0
    for host, unit in work:
        t = host["ts"]
        while i < len(frames) and frames[i]["ts"] <= t:
            open_.append(frames[i])
            i += 1
        open_ = [f for f in open_ if f["ts"] + f.get("dur", 0) >= t]
        mine = [f for f in open_ if f.get("tid") == host.get("tid") and f.get("pid") == host.get("pid")]
        names = [str(f["name"]) for f in sorted(mine, key=lambda f: -f["ts"])]
        out.append((float(unit.get("dur", 0)), str(unit.get("name", "")), _ours(names, depth)))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="large", choices=("tiny", "small", "large"))
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3, help="profiled steps")
    ap.add_argument("--depth", type=int, default=3, help="scao_dist frames shown per operator")
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--scao-kwargs", default="{}")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = True
    model = _model(args.size, device, True)
    opt = SCAO(model.parameters(), lr=1e-4, **json.loads(args.scao_kwargs))
    _timed_steps(model, opt, 21, args.batch, device, 0)  # first bases and a few refreshes, as step_profile's warm-up
    for g in opt.param_groups:
        g["precond_freq"] = 10**9
    graphs = GroupGraphs(opt.groups, device, record=False).install(opt)
    _timed_steps(model, opt, 2, args.batch, device, 100)
    acts = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=acts, record_shapes=True, with_stack=True) as prof:
        for i in range(args.steps):
            _grads(model, args.batch, device, 200 + i)
            _sync(device)
            with torch.profiler.record_function(STEP):
                opt.step()
            _sync(device)
            opt.zero_grad(set_to_none=True)
    ran = graphs.counts["eager"]
    if ran < len(opt.groups) * (2 + args.steps):
        raise SystemExit(f"only {ran} group steps took the device-input path; expected every group at every step")
    with tempfile.TemporaryDirectory() as tmp:
        prof.export_chrome_trace(f"{tmp}/trace.json")
        with open(f"{tmp}/trace.json") as f:
            trace = json.load(f)
    rows = attribute(trace, args.depth, device.type == "cuda")
    by_line: dict[str, list[float]] = {}
    by_op: dict[tuple[str, ...], list[float]] = {}
    for us, name, where in rows:
        acc = by_line.setdefault(where[0] if where else "(outside scao_dist)", [0.0, 0])
        acc[0] += us / args.steps
        acc[1] += 1 / args.steps
        acc = by_op.setdefault((name[:100], *where), [0.0, 0])
        acc[0] += us / args.steps
        acc[1] += 1 / args.steps
    lines = sorted(([k, round(v[0], 1), v[1]] for k, v in by_line.items()), key=lambda x: -x[1])
    ops = sorted(([list(k), round(v[0], 1), v[1]] for k, v in by_op.items()), key=lambda x: -x[1])
    what = "GPU kernel" if device.type == "cuda" else "CPU operator"
    print(f"# {args.size}, {device}: {what} us per step by the innermost scao_dist line that launched it")
    for where, us, calls in lines[: args.top]:
        print(f"{us:9.1f} us {calls:6.1f}x  {where}")
    print(f"# by {what} and scao_dist stack")
    for key, us, calls in ops[: args.top]:
        print(f"{us:9.1f} us {calls:6.1f}x  {key[0][:70]}  <- {key[1:]}")
    with open(args.out, "w") as f:
        json.dump({"size": args.size, "device": str(device), "by_line": lines, "ops": ops[:300]}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
