"""Captured steps (``SCAO(cuda_graph=True)``) against eager steps, bit for bit, and timed side by side.

    python -m bench.capture_check --size large --steps 30 --out $OUT/capture_check.json   # CUDA
    python -m bench.capture_check --size tiny --steps 6 --out /tmp/c.json                 # CPU smoke

Three optimizers on three copies of one GPT step with the same gradients (computed once, on the
first copy, and copied to the others) and the same lr schedule (it changes at every step):
``eager`` (the default), ``inputs`` (the device-input path of :mod:`scao_dist.capture` run eagerly,
``GroupGraphs(record=False)``: separates kernel exactness from capture) and ``graph``
(``cuda_graph=True``; on CPU it falls back to ``inputs``'s machinery). The gradients reach the
copies through whatever ``.grad`` their ``zero_grad`` left (the graphs' buffers, for ``graph``). After every step the
weights of each must equal ``eager``'s bit for bit; at the end the whole optimizer states too. Each
``step()`` is timed device-synchronised before and after, the three in a rotating order; their
refresh workers share the process, so these times are rough (``bench.compare`` and
``bench.step_profile`` time one optimizer per process).
Refreshes run as in training (``precond_freq`` 5, lagged on the worker, waited for). ``--grow-at``
widens the stream bases mid-run, so groups are captured again while the refresh worker runs.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import time
from typing import Any

import torch

from scao_dist import SCAO
from scao_dist.capture import GroupGraphs
from scao_dist.demo.gpt import GPT, GPTConfig

NAMES = ("eager", "inputs", "graph")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _states_equal(a: SCAO, b: SCAO) -> list[str]:
    """Keys of block states that differ (empty: equal bit for bit)."""
    sa, sb = a.state_dict()["state"], b.state_dict()["state"]
    bad = []
    for pid in sa:
        for blk, st in sa[pid].items():
            for k, v in st.items():
                w = sb.get(pid, {}).get(blk, {}).get(k)
                if not isinstance(v, torch.Tensor):
                    continue
                if w is None or not torch.equal(v, w):
                    bad.append(f"{pid}/{blk}/{k}")
    return bad


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="large", choices=("tiny", "small", "large"))
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument(
        "--grow-at", type=int, action="append", default=[], metavar="STEP",
        help="before this step, widen every stream side by 16 columns in all three (what a refresh that grows a "
        "basis does): the captured groups get a new key and are captured again, with the refresh worker running",
    )  # fmt: skip
    ap.add_argument(
        "--nan-at", type=int, action="append", default=[], metavar="STEP",
        help="at this step, a NaN in one gradient (all three): each must skip it and change nothing; the captured "
        "optimizer launches its replays behind the check's device flag and reads it at the next step",
    )  # fmt: skip
    ap.add_argument("--scao-kwargs", default="{}", help="JSON: more SCAO keyword arguments for all three")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    kw = json.loads(args.scao_kwargs)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.manual_seed(0)
    base = GPT(getattr(GPTConfig, args.size)()).to(device).to(torch.bfloat16)
    models = {n: (base if n == "eager" else copy.deepcopy(base)) for n in NAMES}
    graphs_on = device.type == "cuda"  # (on CPU "graph" gets the machinery without graphs, below)
    opts = {n: SCAO(models[n].parameters(), lr=args.lr, cuda_graph=graphs_on and n == "graph", **kw) for n in NAMES}
    for n in ("inputs",) + (("graph",) if device.type != "cuda" else ()):
        GroupGraphs(opts[n].groups, device, record=False).install(opts[n])
    params = {n: list(m.parameters()) for n, m in models.items()}
    gen = torch.Generator().manual_seed(1)
    ms: dict[str, list[float]] = {n: [] for n in NAMES}
    first_diff: dict[str, int | None] = {"inputs": None, "graph": None}
    capture_steps = []
    for t in range(args.steps):
        if t in args.grow_at:
            for opt in opts.values():
                for grp in opt.groups:
                    for side in getattr(grp, "sides", ()):
                        if side.mode == "stream" and side.d - side.p >= side.K + 16:
                            grp._grow(side, side.K + 16)
        x = torch.randint(0, base.cfg.vocab, (args.batch, base.cfg.seq_len + 1), generator=gen).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = models["eager"](x[:, :-1], x[:, 1:])
        loss.backward()
        if t in args.nan_at:
            next(p for p in params["eager"] if p.grad is not None and p.dim() == 2).grad.view(-1)[7] = math.nan
        for n in NAMES[1:]:
            for p, q in zip(params["eager"], params[n], strict=True):
                if p.grad is None:
                    q.grad = None
                elif q.grad is not None:  # into the views zero_grad installed (the graphs' buffers)
                    q.grad.copy_(p.grad)
                else:
                    q.grad = p.grad.clone()
        lr = args.lr * (0.5 + 0.5 * math.cos(math.pi * t / args.steps))
        graphs = next(iter(opts["graph"]._graphs.values()), None)
        before = dict(graphs.counts) if graphs is not None else {}
        for n in NAMES[t % 3 :] + NAMES[: t % 3]:  # rotated: each waits behind the others' refresh workers in turn
            for g in opts[n].param_groups:
                g["lr"] = lr
            _sync(device)
            t0 = time.perf_counter()
            opts[n].step()
            _sync(device)
            ms[n].append((time.perf_counter() - t0) * 1e3)
            opts[n].zero_grad(set_to_none=True)
        if graphs is not None and graphs.counts.get("captures", 0) > before.get("captures", 0):
            capture_steps.append(t)
        for n in NAMES[1:]:
            same = all(torch.equal(p, q) for p, q in zip(params["eager"], params[n], strict=True))
            if not same and first_diff[n] is None:
                first_diff[n] = t
        times = ", ".join(f"{n} {ms[n][-1]:.2f}" for n in NAMES)
        equal = ", ".join(f"{n} {first_diff[n] is None}" for n in NAMES[1:])
        print(f"step {t}: loss {loss.item():.4f}, ms {times}, equal so far: {equal}", flush=True)
    state_diff = {n: _states_equal(opts["eager"], opts[n]) for n in NAMES[1:]}
    skip = set(range(min(12, args.steps // 2))) | set(capture_steps)
    timed = {n: [v for t, v in enumerate(ms[n]) if t not in skip] for n in NAMES}
    graphs = next(iter(opts["graph"]._graphs.values()), None)
    inputs = next(iter(opts["inputs"]._graphs.values()))
    out: dict[str, Any] = {
        "size": args.size, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "steps": args.steps, "scao_kwargs": kw,
        "first_weight_mismatch_step": first_diff, "state_mismatches": {n: v[:20] for n, v in state_diff.items()},
        "state_mismatch_counts": {n: len(v) for n, v in state_diff.items()},
        "graph_counts": dict(graphs.counts) if graphs is not None else None,
        "inputs_counts": dict(inputs.counts),
        "graph_failed_groups": sum(e.failed for e in graphs.entries.values()) if graphs is not None else None,
        "graph_groups": sum(e.graph is not None for e in graphs.entries.values()) if graphs is not None else None,
        "check_captured": graphs is not None and graphs._check[1] is not None,
        "capture_steps": capture_steps,
        "nan_at": args.nan_at,
        "skipped_steps": {n: opts[n].global_counters().get("skipped_steps", 0) for n in NAMES},
        "steps_taken": {n: opts[n].counters["steps"] for n in NAMES},
        "step_ms_median": {n: round(statistics.median(v), 3) for n, v in timed.items() if v},
        "step_ms_all": {n: [round(v, 3) for v in ms[n]] for n in NAMES},
        "timed_steps": len(timed["eager"]),
    }  # fmt: skip
    ok = all(v is None for v in first_diff.values()) and not any(state_diff.values())
    ok = ok and len(set(out["skipped_steps"].values())) == 1 and len(set(out["steps_taken"].values())) == 1
    ok = ok and inputs.counts["eager"] > 0  # (the device-input path ran: its groups were not stepped eagerly)
    out["bit_exact"] = ok
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps({k: v for k, v in out.items() if k != "step_ms_all"}, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
