"""Tables and plots from the run JSONs of :mod:`bench.compare` (one or several calls, merged).

    python -m bench.report runs/a runs/b/small_runs.tgz some_run.json [--out DIR] [--target-loss 1.2]

Reads directories (every ``*.json`` below them), single JSON files and ``.tgz``/``.tar.gz``/``.tar``
archives of JSON files; writes ``results.md``, ``best_lrs.json`` and the PNG plots into ``--out`` (default:
the first directory given, or ``./bench_report`` when that one is not writable) and prints the Markdown.

Runs are grouped into suites by (model size, steps): numbers are only compared inside a suite. Inside a
suite each optimizer is shown at its best lr (lowest mean final held-out loss over its finished runs), the
headline averaging over seeds; the sweep table lists every lr tried. Ratios are to torch AdamW and to the
best peer (the anchor with the lowest final held-out loss; scao_dist rows are never peers).

Runs that shared the device with other runs (``bench.compare --shard I/K``, K > 1: ``"concurrent_shards"`` in
their JSON) count for losses only: their step times, time-to-target and phase timings are left out of every
table ("—" where no run alone is left) and out of the loss-vs-seconds plot, and a note under the table says so.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import re
import statistics
import sys
import tarfile
from collections import defaultdict
from pathlib import Path
from typing import Any

PEER_ORDER = ("adamw", "muon", "flash", "soap", "scao024", "scao024_int8")
LABEL = {
    "adamw": "torch AdamW",
    "muon": "torch Muon + AdamW",
    "flash": "FlashAdamW",
    "soap": "heavyball SOAP",
    "scao024": "scao 0.2.4",
    "scao024_int8": "scao 0.2.4 int8",
    "scao": "scao_dist",
    "scao_soap": "scao_dist fp32 SOAP",
}
FINISHED = ("ok",)


# ---------------------------------------------------------------------------------------------- loading
def load_runs(paths: list[str | Path]) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []

    def add(obj: Any, src: str) -> None:
        items = obj if isinstance(obj, list) else [obj]
        for it in items:
            if isinstance(it, dict) and it.get("schema") and "name" in it and "status" in it:
                it.setdefault("_src", src)
                runs.append(it)

    for p in map(Path, paths):
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.is_file() and (f.suffix == ".json" or f.name.endswith((".tgz", ".tar.gz", ".tar"))):
                    runs.extend(load_runs([f]))
        elif p.name.endswith((".tgz", ".tar.gz", ".tar")):
            with tarfile.open(p) as tf:
                for m in tf.getmembers():
                    if m.isfile() and m.name.endswith(".json"):
                        fh = tf.extractfile(m)
                        if fh is not None:
                            with contextlib.suppress(json.JSONDecodeError):
                                add(json.load(io.TextIOWrapper(fh, encoding="utf-8")), f"{p}:{m.name}")
        elif p.is_file():
            with contextlib.suppress(json.JSONDecodeError):
                add(json.loads(p.read_text()), str(p))
        else:
            print(f"[report] {p}: not found", file=sys.stderr)
    # the same run found twice (a directory and its archive) counts once; the same (setting, optimizer, lr,
    # seed) run again (a later call) replaces the earlier one, a finished run beating an unfinished one
    by_id: dict[str, dict[str, Any]] = {}
    for r in runs:
        by_id.setdefault(r.get("run_id") or json.dumps([r.get("_src"), r.get("started_utc")]), r)
    seen: dict[tuple, dict[str, Any]] = {}
    for r in sorted(by_id.values(), key=lambda r: (finished(r), r.get("started_utc") or "")):
        seen[(*suite_key(r), r["name"], float(r.get("lr", 0)), r.get("seed"))] = r
    return list(seen.values())


# --------------------------------------------------------------------------------------------- numbers
def final_val(r: dict[str, Any]) -> float | None:
    """Held-out loss after the last step taken (None if the run did not end with a finite one)."""
    val = r.get("val") or []
    if not val or val[-1][0] != r.get("steps_done") or r.get("steps_done", 0) == 0:
        return None
    v = val[-1][1]
    return v if v is not None and math.isfinite(v) else None


def val_at(r: dict[str, Any], step: int) -> float | None:
    for s, v, *_ in r.get("val") or []:
        if s == step:
            return v
    return None


def to_target(r: dict[str, Any], target: float | None) -> tuple[int | None, float | None]:
    if target is None:
        return None, None
    for s, v, *rest in r.get("val") or []:
        if s > 0 and v is not None and v <= target:
            return s, (rest[0] if rest else None)
    return None, None


def _mean(xs: list[float | None]) -> float | None:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return statistics.fmean(xs) if xs else None


def shared(r: dict[str, Any]) -> bool:
    """The run shared the device with other runs (``--shard I/K``, K > 1): its timings are not its own."""
    return int(r.get("concurrent_shards") or 1) > 1


def finished(r: dict[str, Any]) -> bool:
    return r["status"] in FINISHED and r.get("steps_done") == r.get("steps")


def suite_key(r: dict[str, Any]) -> tuple:
    """Runs are comparable when these agree: model size, steps, batch, sequence, schedule."""
    return (str(r.get("size")), int(r.get("steps") or 0), r.get("batch_size"), (r.get("model") or {}).get("seq_len"),
            r.get("warmup"), r.get("cosine_steps"), r.get("final_lr_frac"))  # fmt: skip


def suites(runs: list[dict[str, Any]]) -> dict[tuple, list[dict[str, Any]]]:
    out: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        out[suite_key(r)].append(r)
    return dict(sorted(out.items(), key=lambda kv: (kv[0][0] != "small", kv[0][0], -kv[0][1], str(kv[0][2:]))))


def order_names(names: set[str]) -> list[str]:
    peers = [n for n in PEER_ORDER if n in names]
    return peers + sorted(n for n in names if n not in PEER_ORDER)


def by_lr(runs: list[dict[str, Any]], name: str) -> dict[float, list[dict[str, Any]]]:
    out: dict[float, list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        if r["name"] == name:
            out[float(r["lr"])].append(r)
    return dict(sorted(out.items()))


def best_lr(groups: dict[float, list[dict[str, Any]]]) -> float | None:
    """Lowest mean final held-out loss over finished runs (else over any run with a final loss)."""
    for pick in (finished, lambda r: final_val(r) is not None):
        scored = {lr: _mean([final_val(r) for r in rs if pick(r)]) for lr, rs in groups.items()}
        scored = {lr: v for lr, v in scored.items() if v is not None}
        if scored:
            return min(scored, key=scored.get)
    return next(iter(groups), None)


def row_for(name: str, rs: list[dict[str, Any]], lr: float, target: float | None,
            checkpoints: list[int]) -> dict[str, Any]:  # fmt: skip
    done = [r for r in rs if finished(r)] or [r for r in rs if final_val(r) is not None]
    finals = [final_val(r) for r in done]
    fin = [f for f in finals if f is not None]
    tt = [to_target(r, target) for r in done]
    reached = [t for t in tt if t[0] is not None]
    alone = [r for r in done if not shared(r)]  # timings only from runs that had the device to themselves
    s_reached = [t[1] for r, t in zip(done, tt) if t[0] is not None and not shared(r)]
    st = [(r.get("state_bytes_per_param")) for r in done]
    statuses = sorted({r["status"] for r in rs})
    msg = "; ".join(sorted({r.get("message", "") for r in rs if r["status"] not in FINISHED and r.get("message")}))
    return {
        "name": name,
        "family": rs[0].get("family", "peer"),
        "lr": lr,
        "seeds": len(done),
        "ckpt": {c: _mean([val_at(r, c) for r in done]) for c in checkpoints},
        "final": _mean(finals),
        "spread": (max(fin) - min(fin)) / 2 if len(fin) > 1 else None,
        "ms": _mean([(r.get("ms_step") or {}).get("median") for r in alone]),
        "p99": _mean([(r.get("ms_step") or {}).get("p99") for r in alone]),
        "opt_ms": _mean([(r.get("ms_opt_step") or {}).get("median") for r in alone]),
        "state": _mean(st),
        "weights": rs[0].get("weights"),
        "peak": max([r["peak_gib"] for r in done if r.get("peak_gib") is not None], default=None),
        "steps_to": _mean([t[0] for t in reached]) if reached else None,
        "s_to": _mean(s_reached) if s_reached else None,
        "reached": f"{len(reached)}/{len(done)}",
        "nan": sum(r.get("nan_count", 0) for r in rs),
        "status": ",".join(statuses),
        "message": msg,
        "transient": max([r["step_transient_mib"] for r in done if r.get("step_transient_mib")], default=None),
        "runs": rs,
        "best_runs": done,
        "shared": max([int(r.get("concurrent_shards") or 1) for r in done if shared(r)], default=0),
        "timed_alone": len(alone),
    }


def _f(x: Any, nd: int = 3, suffix: str = "") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    if isinstance(x, float):
        return f"{x:.{nd}f}{suffix}"
    return f"{x}{suffix}"


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "—"
    return f"{a / b:.2f}×"


def table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def label(name: str) -> str:
    return f"{LABEL[name]} (`{name}`)" if name in LABEL else f"`{name}`"


# ---------------------------------------------------------------------------------------------- render
def render(runs: list[dict[str, Any]], out_dir: Path | None, target_loss: float | None = None,
           plots: bool = True, brief: bool = False) -> str:  # fmt: skip
    """The whole Markdown report; writes the plots and best_lrs.json into ``out_dir`` when given.

    ``brief``: only the headline, ratio and target tables, the phase totals and the unfinished runs.
    """
    md = ["# scao_dist vs the anchors", ""]
    if not runs:
        return "\n".join([*md, "No runs found."])
    envs = {json.dumps(r.get("env", {}), sort_keys=True) for r in runs if r.get("env")}
    env_rows = []
    for e in map(json.loads, sorted(envs)):
        env_rows.append([e.get("gpu") or e.get("device", "?"), e.get("date_utc", "?"), e.get("torch", "?"),
                         e.get("triton") or "—", e.get("flashoptim") or "—", e.get("heavyball") or "—",
                         e.get("scao") or "—",
                         f"{e.get('scao_dist', '?')} {e.get('git', '')} src {e.get('scao_dist_src', '?')}".strip(),
                         e.get("python", "?")])  # fmt: skip
    md += [table(["device", "date", "torch", "triton", "flashoptim", "heavyball", "scao", "scao_dist", "python"],
                 env_rows[:6]), ""]  # fmt: skip
    cmds = sorted({_shards_as_one(r["cmd"]) for r in runs if r.get("cmd")})
    if cmds and not brief:
        md += ["Commands:", "", *[f"    {c}" for c in cmds[:6]], ""]
    best_all: dict[str, dict[str, float]] = {}
    stems: set[str] = set()
    for key, rs in suites(runs).items():
        size, steps = key[0], key[1]
        stem = f"{size}_{steps}"
        while stem in stems:
            stem += "b"
        stems.add(stem)
        sect, best = render_suite(size, steps, rs, out_dir, target_loss, plots, brief, stem)
        md += sect
        best_all.setdefault(size, {}).update(best)
    if out_dir is not None:
        with contextlib.suppress(OSError):
            (out_dir / "best_lrs.json").write_text(json.dumps({"best_lrs": best_all}, indent=1))
    return "\n".join(md)


def render_suite(size: str, steps: int, rs: list[dict[str, Any]], out_dir: Path | None, target_loss: float | None,
                 plots: bool, brief: bool = False, stem: str = "") -> tuple[list[str], dict[str, float]]:  # fmt: skip
    names = order_names({r["name"] for r in rs})
    any_r = next((r for r in rs if r.get("model", {}).get("params")), rs[0])
    m = any_r.get("model", {})
    evals = sorted({s for r in rs for s, *_ in (r.get("val") or [])})
    checkpoints = [c for c in (400,) if c in evals and c < steps]
    groups = {n: by_lr(rs, n) for n in names}
    best = {n: best_lr(g) for n, g in groups.items()}
    adamw_rows = groups.get("adamw", {})
    target = target_loss
    target_src = "--target-loss"
    if target is None and best.get("adamw") is not None:
        target = _mean([final_val(r) for r in adamw_rows.get(best["adamw"], []) if finished(r)])
        target_src = "AdamW's final held-out loss at its best lr"
    rows = {n: row_for(n, groups[n][best[n]], best[n], target, checkpoints) for n in names if best[n] is not None}
    peers = [r for r in rows.values() if r["family"] == "peer" and r["final"] is not None]
    bp = min(peers, key=lambda r: r["final"]) if peers else None
    aw = rows.get("adamw")
    fl = rows.get("flash")
    params = m.get("params")
    title = (f"## {size} model — d={m.get('d_model')}, {m.get('n_layer')} layers, "
             f"{params / 1e6:.1f}M params, batch {any_r.get('batch_size')}×{m.get('seq_len')}, {steps} steps"
             if params else f"## {size} model, {steps} steps")  # fmt: skip
    md = [title, ""]
    md += [f"Schedule: warmup {any_r.get('warmup')} then cosine to {any_r.get('final_lr_frac')}× at "
           f"{any_r.get('cosine_steps')}; betas {any_r.get('betas')}, wd {any_r.get('weight_decay')}, "
           f"{any_r.get('amp')} autocast; held-out loss on {any_r.get('eval_batches')} fixed batches every "
           f"{any_r.get('eval_every')} steps; ms/step after {any_r.get('timing_skip')} warm-up steps. Target "
           f"held-out loss {_f(target)} ({target_src}).", ""]  # fmt: skip
    used = {n: groups[n][best[n]][0].get("betas_used") for n in names if best[n] is not None and groups[n][best[n]]}
    if any(used.values()):
        md += ["Betas used: " + "; ".join(f"{label(n)} {', '.join(b)}" for n, b in used.items() if b) + ".", ""]

    md += ["### Headline: each optimizer at its best lr (mean over seeds)", ""]
    hdr = [
        "optimizer",
        "lr",
        "seeds",
        *[f"val@{c}" for c in checkpoints],
        f"val@{steps}",
        "±",
        "ms/step",
        "p99",
        "ms in step",
        "state B/param",
        "weights",
        "peak GiB",
        "steps→target",
        "s→target",
        "NaN",
        "status",
    ]
    body = []
    for n in names:
        if n not in rows:
            continue
        r = rows[n]
        body.append([label(n), _lr(r["lr"]), r["seeds"], *[_f(r["ckpt"][c]) for c in checkpoints], _f(r["final"]),
                     _f(r["spread"]), _f(r["ms"], 1), _f(r["p99"], 1), _f(r["opt_ms"], 1), _f(r["state"], 2),
                     r["weights"] or "—", _f(r["peak"], 2),
                     _f(r["steps_to"], 0) + (f" ({r['reached']})" if r["steps_to"] is not None else ""),
                     _f(r["s_to"], 1), r["nan"], r["status"]])  # fmt: skip
    md += [table(hdr, body), ""]
    md += _shared_note([rows[n] for n in names if n in rows])

    bp_name = bp["name"] if bp else None
    md += [f"### Ratios (÷ AdamW, ÷ best peer = {label(bp_name) if bp_name else '—'}"
           + (", peak ÷ FlashAdamW" if fl else "") + ")", ""]  # fmt: skip
    hdr = [
        "optimizer",
        "val ÷AdamW",
        "val ÷peer",
        "ms/step ÷AdamW",
        "ms/step ÷peer",
        "state ÷AdamW",
        "state ÷peer",
        "peak ÷AdamW",
        "peak ÷peer",
        "peak ÷Flash",
    ]
    body = []
    for n in names:
        if n not in rows:
            continue
        r = rows[n]

        def g(k: str, o: dict | None, r: dict = r) -> str:
            return _ratio(r[k], o[k] if o else None)

        body.append([label(n), g("final", aw), g("final", bp), g("ms", aw), g("ms", bp), g("state", aw),
                     g("state", bp), g("peak", aw), g("peak", bp), g("peak", fl)])  # fmt: skip
    md += [table(hdr, body), ""]

    md += _targets(size, rows, aw, bp, fl)

    swept = [n for n in names if len(groups[n]) > 1]
    if swept and not brief:
        lrs = sorted({lr for n in swept for lr in groups[n]})
        md += ["### lr sweep: final held-out loss (mean over seeds; **best**)", ""]
        body = []
        for n in swept:
            cells = []
            for lr in lrs:
                rs_lr = groups[n].get(lr)
                if not rs_lr:
                    cells.append("")
                    continue
                v = _mean([final_val(r) for r in rs_lr if finished(r)])
                cell = _f(v) if v is not None else ",".join(sorted({r["status"] for r in rs_lr}))
                cells.append(f"**{cell}**" if lr == best[n] and v is not None else cell)
            body.append([label(n), *cells])
        md += [table(["optimizer", *[_lr(x) for x in lrs]], body), ""]
        k = max([int(r.get("concurrent_shards") or 1) for n in swept for g in groups[n].values() for r in g], default=1)
        if k > 1:
            md += [f"Runs of this sweep shared the GPU (up to {k} at once, `--shard` or `--concurrent`): "
                   "only their losses are reported.", ""]  # fmt: skip

    md += _phases(rows, brief)
    if not brief:
        md += _memory(rows, names)

    problems = [r for r in rs if not finished(r)]
    if problems:
        md += ["### Runs that did not finish", ""]
        md += [table(["optimizer", "lr", "seed", "status", "steps", "message"],
                     [[label(r["name"]), _lr(r["lr"]), r.get("seed"), r["status"],
                       f"{r.get('steps_done', 0)}/{r.get('steps')}", (r.get("message") or "").replace("|", "/")[:160]]
                      for r in problems]), ""]  # fmt: skip
    if plots and out_dir is not None and not brief:
        md += _plots(size, steps, rows, names, out_dir, stem or f"{size}_{steps}")
    return md, {n: rows[n]["lr"] for n in rows if rows[n]["final"] is not None}


def _shards_as_one(cmd: str) -> str:
    """The K shards of one call (``--shard 0/K`` ... ``--shard K-1/K``) as one command line."""
    return re.sub(r"--shard[ =]\d+/(\d+)", lambda m: f"--shard I/{m[1]} (I = 0..{int(m[1]) - 1})", cmd)


def _shared_note(rows: list[dict[str, Any]]) -> list[str]:
    """One line under a table whose rows include runs that shared the device."""
    hit = [r for r in rows if r["shared"]]
    if not hit:
        return []
    k = max(r["shared"] for r in hit)
    part = [label(r["name"]) for r in hit if r["timed_alone"]]
    line = (f"Runs of {', '.join(label(r['name']) for r in hit)} shared the GPU with other runs (up to {k} at once, "
            "`--shard` or `--concurrent`): only their losses are reported, their ms/step, p99, ms in step and "
            "s→target are left out (—)")  # fmt: skip
    return [line + (f"; the timings of {', '.join(part)} are from its runs alone." if part else "."), ""]


def _lr(lr: float | None) -> str:
    if lr is None:
        return "—"
    mant, exp = f"{lr:.6e}".split("e")
    return f"{mant.rstrip('0').rstrip('.')}e{int(exp)}"


def _targets(size: str, rows: dict, aw: dict | None, bp: dict | None, fl: dict | None) -> list[str]:
    ours = [r for r in rows.values() if r["family"] == "ours"]
    if not ours or size not in ("small", "large"):
        return []

    def check(ok: bool | None) -> str:
        return "—" if ok is None else ("yes" if ok else "**no**")

    def le(a: float | None, b: float | None) -> bool | None:
        return None if a is None or b is None else a <= b

    body = []
    for r in ours:
        if size == "small":
            val_ok = le(r["final"], bp["final"] if bp else None)
            ms_ok = le(r["ms"], 1.5 * aw["ms"] if aw and aw["ms"] else None)
            st_ok = le(r["state"], 4.5)
            body.append([label(r["name"]), f"{_f(r['final'])} vs {_f(bp['final'] if bp else None)}: {check(val_ok)}",
                         f"{_ratio(r['ms'], aw['ms'] if aw else None)}: {check(ms_ok)}",
                         f"{_f(r['state'], 2)}: {check(st_ok)}"])  # fmt: skip
        else:
            ms_ok = le(r["ms"], 1.3 * aw["ms"] if aw and aw["ms"] else None)
            pk_ok = le(r["peak"], 1.15 * fl["peak"] if fl and fl["peak"] else None)
            body.append([label(r["name"]), f"{_ratio(r['ms'], aw['ms'] if aw else None)}: {check(ms_ok)}",
                         f"{_ratio(r['peak'], fl['peak'] if fl else None)}: {check(pk_ok)}"])  # fmt: skip
    hdr = (["optimizer", "held-out ≤ best peer", "ms/step ≤ 1.5× AdamW", "state ≤ 4.5 B/param"] if size == "small"
           else ["optimizer", "ms/step ≤ 1.3× AdamW", "peak ≤ 1.15× FlashAdamW"])  # fmt: skip
    return ["### Targets of issue 9", "", table(hdr, body), ""]


def _phases(rows: dict, brief: bool = False) -> list[str]:
    prof = [(n, r, br) for n, r in rows.items()
            for br in [x for x in r["best_runs"] if not shared(x)][:1] if br.get("phases")]  # fmt: skip
    if not prof:
        return []
    md = ["### Where scao_dist's step goes (ms per step, exclusive; device = CUDA events, host = wall)", ""]
    for n, _r, br in prof:
        ph = br["phases"]
        total = ph.get("step_device_ms") or 0.0
        body = []
        for phase, d in ph["phases"].items():
            share = f"{100 * d['device_ms'] / total:.0f}%" if total else "—"
            body.append([phase, d["group"], _f(d["device_ms"], 2), share, _f(d["host_ms"], 2), d["calls_per_step"]])
        body.append(["**step()**", "", _f(ph.get("step_device_ms"), 2), "100%", _f(ph.get("step_host_ms"), 2), ""])
        by_group: dict[str, float] = defaultdict(float)
        for d in ph["phases"].values():
            by_group[d["group"]] += d["device_ms"]
        md += [
            f"{label(n)}, lr {_lr(br['lr'])}, {ph['steps']} profiled steps after training ({ph['timer']}); "
            f"refresh work on the worker thread (async, off the step): {_f(ph.get('refresh_compute_async_ms'), 2)} "
            f"ms/step. By heading: "
            + ", ".join(f"{k} {v:.2f}" for k, v in sorted(by_group.items(), key=lambda kv: -kv[1])),
            "",
        ]
        if brief:
            continue
        md += [table(["phase", "heading", "device ms", "share", "host ms", "calls/step"], body), ""]
        if ph.get("notes"):
            md += ["Notes: " + "; ".join(ph["notes"]), ""]
    return md


def _memory(rows: dict, names: list[str]) -> list[str]:
    body = []
    pieces_seen: list[str] = []
    for n in names:
        r = rows.get(n)
        if not r or not r["best_runs"]:
            continue
        st = r["best_runs"][0].get("state") or {}
        params = r["best_runs"][0].get("model", {}).get("params") or 1
        walk = st.get("walk", {})
        pieces = st.get("pieces") or {}
        for k in pieces:
            if k not in pieces_seen:
                pieces_seen.append(k)
        body.append((n, r, st, params, walk, pieces))
    if not body:
        return []
    hdr = [
        "optimizer",
        "total B/param",
        "counted by",
        "in opt.state",
        "in param_groups",
        "other attributes",
        *pieces_seen,
        "step transient MiB",
    ]
    out = []
    for n, r, st, params, walk, pieces in body:
        out.append([label(n), _f(st.get("total", 0) / params, 3), st.get("source", "—"),
                    _f(walk.get("state", 0) / params, 3), _f(walk.get("param_groups", 0) / params, 3),
                    _f(walk.get("attributes", 0) / params, 3),
                    *[_f(pieces[k] / params, 3) if k in pieces else "" for k in pieces_seen],
                    _f(r["transient"], 1)])  # fmt: skip
    notes = []
    for n, _r, st, params, *_ in body:
        walk_total, total = st.get("walk_total"), st.get("total")
        if walk_total is not None and total and abs(walk_total - total) > 0.01 * total:
            notes.append(
                f"- {label(n)}: the walk over the optimizer's objects finds {walk_total / params:.3f} "
                f"B/param, memory_report {total / params:.3f}: one of them misses or double-counts"
            )
    for n, r, *_ in body:
        extra = r["best_runs"][0].get("scao_dist") or {}
        if extra.get("ranks"):
            kept = ", ".join(f"{x['side']}{x['d']} ({x['mode']}, {x['blocks']} blocks): {x['mean_rank']:g}"
                             for x in extra["ranks"])  # fmt: skip
            notes.append(f"- {label(n)} mean basis rank kept per side: {kept}")
        if extra.get("counters"):
            counters = ", ".join(f"{k} {v}" for k, v in sorted(extra["counters"].items()))
            notes.append(f"- {label(n)} counters: {counters}")
    return ["### Optimizer state, bytes per parameter, by where it was found (and by piece for scao_dist)", "",
            table(hdr, out), "", *notes, ""]  # fmt: skip


def _plots(size: str, steps: int, rows: dict, names: list[str], out_dir: Path, stem: str) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return ["(matplotlib missing: no plots)", ""]
    colors = plt.get_cmap("tab10").colors
    files = []
    notes = []
    for kind in ("step", "seconds"):
        fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
        left_out = drawn = 0
        for n in (n for n in names if n in rows):
            c = colors[_color_index(n, names) % len(colors)]
            for j, r in enumerate(rows[n]["best_runs"]):
                if kind == "seconds" and shared(r):  # its seconds were spent sharing the GPU
                    left_out += 1
                    continue
                val = [(s, v, t) for s, v, t in (r.get("val") or []) if v is not None]
                if not val:
                    continue
                xs = [s if kind == "step" else t for s, _, t in val]
                lab = f"{n} lr {_lr(r['lr'])}" + (f" s{r['seed']}" if len(rows[n]["best_runs"]) > 1 else "")
                ax.plot(xs, [v for _, v, _ in val], color=c, ls=("-", "--", ":", "-.")[j % 4], marker="o", ms=2.5,
                        label=lab)  # fmt: skip
                drawn += 1
                if kind == "step" and j == 0 and r.get("train_loss"):
                    tl = _ema([x for x in r["train_loss"]])
                    ax.plot(range(1, len(tl) + 1), tl, color=c, alpha=0.25, lw=0.8)
        if left_out:
            notes.append(f"Loss vs seconds leaves out {left_out} run(s) that shared the GPU with other runs"
                         + (" (all of them: no plot)." if not drawn else "."))  # fmt: skip
            if not drawn:
                plt.close(fig)
                continue
        xlabel = "train seconds (synchronised step times; warm-up steps at the median)"
        ax.set_xlabel("step" if kind == "step" else xlabel)
        ax.set_ylabel("held-out loss (faint: train loss, EMA)" if kind == "step" else "held-out loss")
        ax.set_title(f"{size} model, {steps} steps — each optimizer at its best lr")
        ax.grid(alpha=0.3)
        ys = [v for n in rows for r in rows[n]["best_runs"] for _, v, *_ in (r.get("val") or []) if v is not None]
        if ys:
            lo = min(ys)
            ax.set_ylim(max(lo - 0.1, 0), min(max(ys), lo + 3.0) + 0.1)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        fig.tight_layout()
        fname = f"loss_vs_{kind}_{stem}.png"
        try:
            fig.savefig(out_dir / fname)
            files.append(fname)
        except OSError as e:
            print(f"[report] could not write {fname}: {e}", file=sys.stderr)
        plt.close(fig)
    md = [f"![held-out loss vs {'step' if 'step' in f else 'seconds'}]({f})" for f in files] + [""]
    return md + ([*notes, ""] if notes else [])


def _color_index(name: str, names: list[str]) -> int:
    """The same colour for an optimizer in every plot."""
    fixed = [*PEER_ORDER, "scao", "scao_soap"]
    if name in fixed:
        return fixed.index(name)
    return len(fixed) + sorted(n for n in names if n not in fixed).index(name)


def _ema(xs: list[float | None], beta: float = 0.95) -> list[float | None]:
    out, m = [], None
    for x in xs:
        if x is None or not math.isfinite(x):
            out.append(None)
            continue
        m = x if m is None else beta * m + (1 - beta) * x
        out.append(m)
    return [v if v is not None else float("nan") for v in out]


def render_dir(paths: list[str | Path], out_dir: str | Path | None, target_loss: float | None = None,
               plots: bool = True, brief: bool = False) -> str:  # fmt: skip
    """Load, render, write ``results.md`` (and plots) into ``out_dir``; return the Markdown."""
    runs = load_runs(paths)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        try:
            out.mkdir(parents=True, exist_ok=True)
            probe = out / ".write_probe"
            probe.write_text("")
            probe.unlink()
        except OSError:
            print(f"[report] {out} is not writable; writing to ./bench_report", file=sys.stderr)
            out = Path("bench_report")
            out.mkdir(exist_ok=True)
    md = render(runs, out, target_loss=target_loss, plots=plots)
    if out is not None:
        (out / "results.md").write_text(md + "\n")
    return render(runs, None, target_loss=target_loss, plots=False, brief=True) if brief else md


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.split("\n\n")[0])
    p.add_argument("paths", nargs="+", help="run directories, JSON files, .tgz archives")
    p.add_argument("--out", default=None, help="where results.md and the plots go (default: first directory)")
    p.add_argument("--target-loss", type=float, default=None)
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--brief", action="store_true", help="print only the headline/ratio/target tables (files: all)")
    a = p.parse_args(argv)
    out = a.out or next((x for x in a.paths if os.path.isdir(x)), "bench_report")
    print(render_dir(a.paths, out, target_loss=a.target_loss, plots=not a.no_plots, brief=a.brief))
    return 0


if __name__ == "__main__":
    sys.exit(main())
