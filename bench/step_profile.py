"""Where the host time of scao_dist's ``step()`` goes: launches, syncs and Python, on one model.

    python -m bench.step_profile --size large --out $OUT/step_profile.json     # CUDA
    python -m bench.step_profile --size tiny --steps 4 --out /tmp/p.json       # CPU smoke

For each case (scao_dist default; the same with refreshes off after the first basis; torch AdamW
fused as the reference; ``flash``: flashoptim's FlashAdamW, the compressed-state anchor, when
installed) it runs a few warm-up steps on random tokens, then times ``step()`` alone
(device-synchronised before and after, so the number is the step's whole cost, host and device),
and for scao_dist also records with ``torch.profiler`` the operators and CUDA runtime calls per
step (kernel launches, synchronising calls) and with ``cProfile`` the Python functions that take
the step's host time. Nothing here changes scao_dist; the JSON holds everything printed.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import statistics
import tempfile
import time
from typing import Any

import torch

from bench import knobs
from bench.optimizers import NotInstalledError, build, make_spec, prepare_model
from scao_dist import SCAO
from scao_dist.demo.gpt import GPT, GPTConfig

SYNC_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaMemcpy", "cudaEventSynchronize")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _model(size: str, device: torch.device, bf16: bool) -> GPT:
    torch.manual_seed(0)
    model = GPT(getattr(GPTConfig, size)()).to(device)
    return model.to(torch.bfloat16) if bf16 else model


def _flash(model: GPT, device: torch.device) -> Any:
    """flashoptim's ``FlashAdamW`` as ``bench.optimizers`` builds it (bf16 weights by ``cast_model``, its 8-bit
    states and correction bits; AdamW's default weight decay), on ``model``."""
    spec = make_spec("flash")
    prepare_model(spec, model)
    return build(spec, model, 1e-4, betas=None, eps=1e-8, weight_decay=0.01, device=device).opt


def _grads(model: GPT, batch: int, device: torch.device, seed: int) -> None:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randint(0, model.cfg.vocab, (batch, model.cfg.seq_len + 1), generator=gen).to(device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        loss = model(x[:, :-1], x[:, 1:])
    loss.backward()


def _timed_steps(model: GPT, opt: Any, n: int, batch: int, device: torch.device, seed0: int) -> list[float]:
    out = []
    for i in range(n):
        _grads(model, batch, device, seed0 + i)
        _sync(device)
        t0 = time.perf_counter()
        opt.step()
        _sync(device)
        out.append((time.perf_counter() - t0) * 1e3)
        opt.zero_grad(set_to_none=True)
    return out


def _event() -> torch.cuda.Event:
    ev = torch.cuda.Event(enable_timing=True)
    ev.record()
    return ev


def _host_split(model: GPT, opt: Any, n: int, batch: int, device: torch.device) -> dict[str, Any] | None:
    """Where a captured step's time goes, without a profiler (one device's groups captured; else ``None``).

    Per step (after a real backward and a sync, as the timed steps): host time from ``step()``'s entry to the
    NaN/inf check's launch (``host_check_us``), to the first group replay's launch (``host_first_us``) and to
    its return (``host_step_us``); the wall time until the GPU is done (``wall_us``); and from CUDA events
    recorded at the entry, after the check's launch and before the first replay: when the GPU finished the
    check (``gpu_check_us``) and reached the first replay (``gpu_first_us``), and the GPU's idle time between
    the two (``idle_us``: the host was not there yet). Medians over ``n`` steps."""
    if device.type != "cuda" or len(getattr(opt, "_graphs", {})) != 1:
        return None
    graphs = next(iter(opt._graphs.values()))
    marks: dict[str, tuple[float, torch.cuda.Event]] = {}
    flag_of, run = graphs.finite_flag, graphs._run

    def finite_flag(*args: Any, **kwargs: Any) -> Any:
        out = flag_of(*args, **kwargs)
        marks.setdefault("check", (time.perf_counter(), _event()))
        return out

    def first_run(*args: Any, **kwargs: Any) -> Any:
        marks.setdefault("first", (time.perf_counter(), _event()))
        return run(*args, **kwargs)

    graphs.finite_flag, graphs._run = finite_flag, first_run  # (instance attributes: the methods come back below)
    rows: list[dict[str, float]] = []
    try:
        for i in range(n):
            _grads(model, batch, device, 20_000 + i)
            _sync(device)
            marks.clear()
            e0, t0 = _event(), time.perf_counter()
            opt.step()
            t1 = time.perf_counter()
            _sync(device)
            t2 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            if "check" not in marks or "first" not in marks:
                continue
            (tc, ec), (tf, ef) = marks["check"], marks["first"]
            gc, gf = e0.elapsed_time(ec) * 1e3, e0.elapsed_time(ef) * 1e3
            rows.append({"host_check_us": (tc - t0) * 1e6, "host_first_us": (tf - t0) * 1e6,
                         "host_step_us": (t1 - t0) * 1e6, "wall_us": (t2 - t0) * 1e6, "gpu_check_us": gc,
                         "gpu_first_us": gf, "idle_us": max(0.0, gf - gc)})  # fmt: skip
    finally:
        del graphs.finite_flag, graphs._run
    if not rows:
        return None
    return {k: round(statistics.median(r[k] for r in rows), 1) for k in rows[0]} | {"steps": len(rows)}


def _torch_profile(model: GPT, opt: Any, n: int, batch: int, device: torch.device) -> dict[str, Any]:
    acts = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    grads: list[list[torch.Tensor | None]] = []
    for i in range(n + 2):  # gradients outside the profile window
        _grads(model, batch, device, 10_000 + i)
        grads.append([p.grad.clone() if p.grad is not None else None for p in model.parameters()])
        opt.zero_grad(set_to_none=True)
    homes: dict[int, torch.Tensor] = {}
    for g in grads[:2]:  # two steps from the kept gradient tensors first (what is keyed on them, recorded)
        _load_grads(model, g, homes)
        opt.step()
        opt.zero_grad(set_to_none=True)
    _sync(device)
    with torch.profiler.profile(activities=acts, record_shapes=True) as prof:
        for g in grads[2:]:
            _load_grads(model, g, homes)
            _sync(device)
            opt.step()
            _sync(device)
            opt.zero_grad(set_to_none=True)
    ka = prof.key_averages()
    rows = sorted(ka, key=lambda e: e.self_cpu_time_total, reverse=True)
    top = [
        {"name": e.key, "calls_per_step": e.count / n, "self_cpu_ms_per_step": e.self_cpu_time_total / 1e3 / n}
        for e in rows[:30]
    ]
    dev = [e for e in ka if getattr(e, "self_device_time_total", 0) > 0]
    dev.sort(key=lambda e: e.self_device_time_total, reverse=True)
    top_dev = [
        {"name": e.key[:90], "calls_per_step": e.count / n, "device_ms_per_step": e.self_device_time_total / 1e3 / n}
        for e in dev[:25]
    ]
    launches = sum(e.count for e in ka if "LaunchKernel" in e.key or e.key in ("cuLaunchKernel", "cuLaunchKernelEx"))
    syncs = {e.key: e.count / n for e in ka if any(e.key.startswith(s) for s in SYNC_CALLS)}
    by_shape = [  # torch's operators only: their kernels appear under their own names too
        e
        for e in prof.key_averages(group_by_input_shape=True)
        if getattr(e, "self_device_time_total", 0) > 0 and e.key.startswith("aten::")
    ]
    by_shape.sort(key=lambda e: e.self_device_time_total, reverse=True)
    top_shapes = [
        {"name": e.key, "input_shapes": str(e.input_shapes)[:200], "calls_per_step": e.count / n,
         "device_ms_per_step": e.self_device_time_total / 1e3 / n}
        for e in by_shape[:25]
    ]  # fmt: skip
    out = {"top_self_cpu": top, "top_device": top_dev, "top_device_by_shape": top_shapes,
           "launches_per_step": launches / n, "sync_calls_per_step": syncs}  # fmt: skip
    if device.type == "cuda":
        with tempfile.TemporaryDirectory() as tmp:
            prof.export_chrome_trace(f"{tmp}/trace.json")
            with open(f"{tmp}/trace.json") as f:
                trace = json.load(f)
            out["device_timeline"] = device_timeline(trace, n)
            out["step_windows"] = step_windows(trace, n)
    return out


def _load_grads(model: GPT, grads: list[torch.Tensor | None], homes: dict[int, torch.Tensor]) -> None:
    """Stored gradients where backward would put them: into the ``.grad`` tensors that ``zero_grad``
    left (SCAO's views into its gradient buffers with ``cuda_graph``, so its step copies nothing, as
    in training), else into one tensor per parameter kept across steps (``homes``), as the caching
    allocator hands a training loop's backward the same memory every step (so a check keyed on the
    gradients' addresses is replayed here as it is there)."""
    for p, g in zip(model.parameters(), grads, strict=True):
        if g is not None and p.grad is not None:
            p.grad.copy_(g)
        elif g is not None:
            home = homes.setdefault(id(p), torch.empty_like(g))
            p.grad = home.copy_(g)
        else:
            p.grad = None


def step_windows(trace: dict[str, Any], n: int, top: int = 10) -> dict[str, Any]:
    """Each ``Optimizer.step#...`` call of a Chrome trace, from its start on the host to the end of its
    last GPU work: ``wall_ms`` (what the step costs when nothing overlaps it), ``busy_ms`` (the GPU's
    share of it), ``host_lead_ms`` (host time before its first kernel) and the longest idle gaps inside
    the steps (``longest_gaps_us``: length, the GPU work that ended the gap). ``wall - busy`` is the time
    the GPU waited for the host inside the step.

    A step's GPU work is what the host launched inside the call: the kernels and copies whose
    correlation ids are those of the runtime calls (launches, graph replays, copies) made during it,
    not the next step's gradient copies. A trace without correlation ids falls back to all the GPU
    work that starts before the next call."""
    ev = trace.get("traceEvents", [])
    steps = sorted(  # the host's annotation, not its copy on the GPU's timeline ("gpu_user_annotation")
        (e["ts"], e["ts"] + e.get("dur", 0))
        for e in ev
        if e.get("ph") == "X"
        and str(e.get("name", "")).startswith("Optimizer.step#")
        and not str(e.get("cat", "")).startswith("gpu")
    )
    gpu = _gpu_events(trace)
    if not steps or not gpu:
        return {}
    runtime = [e for e in ev if e.get("ph") == "X" and e.get("cat") in RUNTIME_CATS and _corr(e) is not None]
    walls, busys, leads, gaps = [], [], [], []
    timeline: list[list[Any]] = []
    per_name: dict[str, list[float]] = {}  # full kernel name -> [calls, us], summed over the steps
    for k, (t0, t1) in enumerate(steps):
        t_next = steps[k + 1][0] if k + 1 < len(steps) else float("inf")
        launched = {_corr(e) for e in runtime if t0 <= e["ts"] <= t1}
        if launched:
            mine = [e for e in gpu if _corr(e) in launched]
        else:
            mine = [e for e in gpu if t0 <= e["ts"] < t_next]
        if not mine:
            continue
        busy, end, step_gaps = _merged(mine)
        for e in mine:
            acc = per_name.setdefault(str(e["name"]), [0, 0.0])
            acc[0] += 1
            acc[1] += e.get("dur", 0)
        if k == len(steps) - 1:  # the last step, event by event: what the GPU ran and what the host called
            host = [e for e in runtime if t0 <= e["ts"] <= t1 and e.get("dur", 0) >= 5]
            timeline = sorted(
                [["gpu", round(e["ts"] - t0, 1), round(e.get("dur", 0), 1), str(e["name"])[:60]] for e in mine]
                + [["host", round(e["ts"] - t0, 1), round(e.get("dur", 0), 1), str(e["name"])[:40]] for e in host],
                key=lambda r: r[1],
            )
        walls.append(end - t0)
        busys.append(busy)
        leads.append(mine[0]["ts"] - t0)
        gaps += step_gaps
    if not walls:
        return {}
    med = statistics.median
    # what the GPU ran inside the steps, by full name: calls and us per step (streams overlap: the sum can
    # exceed busy_ms)
    top_names = sorted(per_name.items(), key=lambda kv: -kv[1][1])[:40]
    kernels = [[name, round(c / len(walls), 1), round(us / len(walls), 1)] for name, (c, us) in top_names]
    return {"steps": len(walls), "wall_ms": round(med(walls) / 1e3, 3), "busy_ms": round(med(busys) / 1e3, 3),
            "host_lead_ms": round(med(leads) / 1e3, 3),
            "longest_gaps_us": [[round(g, 1), name] for g, name in sorted(gaps, reverse=True)[:top]],
            "last_step_timeline_us": timeline,
            "kernels_in_step": kernels}  # fmt: skip


RUNTIME_CATS = ("cuda_runtime", "cuda_driver")
"""Chrome-trace categories of the host's CUDA calls (their ``correlation`` ids tag the GPU work they started)."""


def _corr(e: dict[str, Any]) -> int | None:
    return (e.get("args") or {}).get("correlation")


def device_timeline(trace: dict[str, Any], n: int, top: int = 12) -> dict[str, Any]:
    """How busy the GPU was during the profiled steps, from a Chrome trace: the union of kernel and
    memcpy/memset intervals per step (``busy_ms``) against the span from the first to the last
    (``span_ms``), and the longest idle gaps inside it with the GPU work that ended the gap. A step
    whose ``busy_ms`` is well below its time is waiting for the host (launches, Python, syncs)."""
    ev = _gpu_events(trace)
    if not ev:
        return {}
    busy, end, gaps = _merged(ev)
    idle = sorted(gaps, reverse=True)[:top]
    return {
        "busy_ms_per_step": round(busy / 1e3 / n, 3),
        "span_ms_per_step": round((end - ev[0]["ts"]) / 1e3 / n, 3),
        "gaps_per_step": round(len(gaps) / n, 1),
        "gap_ms_per_step_over_20us": round(sum(g for g, _ in gaps if g > 20) / 1e3 / n, 3),
        "longest_gaps_us": [[round(g, 1), name] for g, name in idle],
    }


DEVICE_CATS = ("kernel", "gpu_memcpy", "gpu_memset")
"""Chrome-trace categories of GPU work."""


def _gpu_events(trace: dict[str, Any]) -> list[dict[str, Any]]:
    """The GPU work of a Chrome trace (:data:`DEVICE_CATS`), in order of start."""
    ev = [e for e in trace.get("traceEvents", []) if e.get("ph") == "X" and e.get("cat") in DEVICE_CATS]
    return sorted(ev, key=lambda e: e["ts"])


def _merged(ev: list[dict[str, Any]]) -> tuple[float, float, list[tuple[float, str]]]:
    """Events sorted by start, as one timeline: (time covered by at least one, end of the last,
    the idle gaps between them as ``(length, name of the event that ended the gap)``)."""
    busy, gaps, end = 0.0, [], ev[0]["ts"]
    for e in ev:
        t0, t1 = e["ts"], e["ts"] + e.get("dur", 0)
        if t0 > end:
            gaps.append((t0 - end, e["name"][:80]))
        busy += max(0.0, t1 - max(t0, end))
        end = max(end, t1)
    return busy, end, gaps


def _cprofile(model: GPT, opt: Any, n: int, batch: int, device: torch.device) -> str:
    pr = cProfile.Profile()
    for i in range(n):
        _grads(model, batch, device, 20_000 + i)
        _sync(device)
        pr.enable()
        opt.step()
        _sync(device)
        pr.disable()
        opt.zero_grad(set_to_none=True)
    buf = io.StringIO()
    pstats.Stats(pr, stream=buf).sort_stats("tottime").print_stats(35)
    return buf.getvalue()


def _stats(ms: list[float]) -> dict[str, float]:
    ms = sorted(ms)
    return {"median": round(statistics.median(ms), 3), "p90": round(ms[int(0.9 * (len(ms) - 1))], 3),
            "min": round(ms[0], 3)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="large", choices=("tiny", "small", "large"))
    ap.add_argument("--batch", type=int, default=2, help="batch size (the gradients' values do not matter)")
    ap.add_argument("--steps", type=int, default=30, help="timed steps per case (after 2 precond periods)")
    ap.add_argument("--profile-steps", type=int, default=10)
    ap.add_argument("--cases", default="scao,scao_norefresh,adamw")
    ap.add_argument("--scao-kwargs", default="{}", help='JSON: more SCAO keyword arguments, e.g. {"precond_freq": 10}')
    knobs.add_argument(ap)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    scao_kwargs = json.loads(args.scao_kwargs)
    settings = knobs.apply_settings(args.set)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = True
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    result: dict[str, Any] = {"size": args.size, "scao_kwargs": scao_kwargs, "settings": settings, "device": name,
                              "torch": torch.__version__, "cases": {}}  # fmt: skip
    for case in args.cases.split(","):
        bf16 = case.startswith("scao")
        model = _model(args.size, device, bf16)
        if case == "adamw":
            opt: Any = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
        elif case == "flash":
            try:
                opt = _flash(model, device)
            except NotInstalledError as e:  # (the anchors' wheels travel to the GPU: bench/use_wheels.sh)
                result["cases"][case] = {"skipped": str(e)}
                print(f"== {case}: skipped ({e})", flush=True)
                continue
        else:
            opt = SCAO(model.parameters(), lr=1e-4, **scao_kwargs)
        warm = 21
        _timed_steps(model, opt, warm, args.batch, device, 0)
        if case == "scao_norefresh":
            for g in opt.param_groups:
                g["precond_freq"] = 10**9
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        ms = _timed_steps(model, opt, args.steps, args.batch, device, 100)
        rec: dict[str, Any] = {"step_ms": _stats(ms)}
        if device.type == "cuda":  # (model, gradients, states and the graphs' pools, held or in use)
            rec["peak_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        if case.startswith("scao"):
            rec["host_split"] = _host_split(model, opt, args.steps, args.batch, device)
            if rec["host_split"]:
                print(f"   host split (us, medians, no profiler): {rec['host_split']}", flush=True)
            rec["counters"] = {k: int(v) for k, v in opt.counters.items()}
            rec["torch_profile"] = _torch_profile(model, opt, args.profile_steps, args.batch, device)
            rec["cprofile"] = _cprofile(model, opt, args.profile_steps, args.batch, device)
        result["cases"][case] = rec
        print(f"== {case}: step() {rec['step_ms']}, peak {rec.get('peak_mb')} MB", flush=True)
        if "torch_profile" in rec:
            tp = rec["torch_profile"]
            print(f"   launches/step {tp['launches_per_step']:.0f}, syncs/step {tp['sync_calls_per_step']}")
            for row in tp["top_self_cpu"][:18]:
                print(f"   {row['self_cpu_ms_per_step']:8.2f} ms {row['calls_per_step']:7.1f}x  {row['name']}")
            tl_ = tp.get("device_timeline")
            if tl_:
                print(f"   GPU busy {tl_['busy_ms_per_step']} of {tl_['span_ms_per_step']} ms per step "
                      f"({tl_['gaps_per_step']} idle gaps, {tl_['gap_ms_per_step_over_20us']} ms in gaps > 20 us); "
                      f"longest (us, next kernel): {tl_['longest_gaps_us'][:6]}")  # fmt: skip
            if tp.get("step_windows"):
                sw = tp["step_windows"]
                print(
                    f"   inside step(): wall {sw['wall_ms']} ms, GPU busy {sw['busy_ms']} ms, "
                    f"first kernel after {sw['host_lead_ms']} ms (medians of {sw['steps']}); "
                    f"longest gaps inside (us, next): {sw.get('longest_gaps_us', [])[:6]}"
                )
            for name, calls, us in sw.get("kernels_in_step", [])[:12] if tp.get("step_windows") else []:
                print(f"   in step(): {us:8.1f} us {calls:5.1f}x  {name[:150]}")
            print("   -- device time per step (all streams)")
            for row in tp["top_device"][:20]:
                print(f"   {row['device_ms_per_step']:8.2f} ms {row['calls_per_step']:7.1f}x  {row['name']}")
            print("   -- aten operators by input shapes (device ms per step)")
            for row in tp["top_device_by_shape"][:15]:
                ms, calls = row["device_ms_per_step"], row["calls_per_step"]
                print(f"   {ms:8.2f} ms {calls:7.1f}x  {row['name']} {row['input_shapes']}")
            print("\n".join(rec["cprofile"].splitlines()[:40]))
        del opt, model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
