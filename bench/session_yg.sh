#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200), 2026-12-03: launch settings of the complement kernel now that both its products
# are plain bf16 ones (KronGroup.p_dtype): bench.kernels --sweep on the step's case (tiles, warps, pipeline stages,
# lowrank.COMPLEMENT_STAGES), then the 405M step() captured with the default settings and with the sweep's best
# (module attributes set before the run, as bench.kernels' with_config does), fused AdamW in each process.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/session_yg}
W=/tmp/session_yg_work
mkdir -p "$OUT" "$W"
export TRITON_CACHE_DIR=$W/triton_cache
timeout 130 python3 -m bench.kernels --only complement_update --match "bf16 X_m" --sweep --warmup 10 --rep 60 \
  --out "$OUT/sweep.json" > "$W/sweep.log" 2>&1
echo "sweep rc=$?"; grep -E "verification|mismatch|sweep|GB/s" "$W/sweep.log" | cut -c1-220 | head -6
for T in default best; do
  timeout 60 python3 - "$T" "$OUT" > "$W/prof_$T.log" 2>&1 <<'PY'
import json, runpy, sys
from scao_dist.kernels import lowrank
which, out = sys.argv[1], sys.argv[2]
if which == "best":
    rows = [r for r in json.load(open(f"{out}/sweep.json"))["kernels"] if r.get("sweep")]
    best = min(rows[0]["sweep"], key=lambda c: c["ms"])
    for k, v in best.items():
        if k.startswith("lowrank."):
            setattr(lowrank, k.split(".")[1], tuple(v) if isinstance(v, list) else v)
    print("settings", {k: v for k, v in best.items()})
sys.argv = ["step_profile", "--size", "large", "--cases", "scao_norefresh,adamw", "--steps", "30", "--profile-steps", "3",
            "--scao-kwargs", '{"cuda_graph": true}', "--out", f"{out}/prof_{which}.json"]
runpy.run_module("bench.step_profile", run_name="__main__")
PY
  echo "profile $T rc=$?"; grep -E "settings|step\(\)|inside step|_complement" "$W/prof_$T.log" | cut -c1-160 | head -6
done
tar czf "$OUT/session_yg.tgz" -C "$W" --exclude triton_cache .
