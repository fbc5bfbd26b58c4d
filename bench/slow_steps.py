"""Print what tells a slow step apart in ``bench.scaling`` results: each run's slowest warm-up and timed
steps, its refresh counters, and the Triton kernel variants it built after its first two steps.

    python -m bench.slow_steps OUT/f10/scao_n1.json [more.json ...]
"""

from __future__ import annotations

import json
import sys


def summary(path: str) -> list[str]:
    """The lines printed for one ``bench.scaling`` JSON (rank 0)."""
    with open(path) as f:
        r = json.load(f)["ranks"][0]
    lines = []
    for key in ("warmup_step_ms", "step_ms"):
        ms = r[key]
        top = sorted(range(len(ms)), key=lambda i: -ms[i])[:3]
        lines.append(f"  {key}: slowest (index, ms) {[(i, round(ms[i], 1)) for i in top]}")
    c = r.get("counters") or {}
    keys = ("refreshes", "refresh_waits", "refresh_late", "refreshes_deferred")
    counts = {k: c.get(k, 0) for k in keys}
    lines.append(f"  counters: {counts}")
    tv = r.get("triton_variants") or []  # [step, kernel, ms, signature]; steps count the warm-up steps first
    late = [e for e in tv if e[0] >= 2]
    lines.append(f"  Triton variants built: {len(tv)}; from step 2 on: {[e[:3] for e in late]}")
    lines += [f"    {e[3][:300]}" for e in late if len(e) > 3]
    return lines


def main(argv: list[str] | None = None) -> int:
    for path in argv if argv is not None else sys.argv[1:]:
        print(path)
        print("\n".join(summary(path)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
