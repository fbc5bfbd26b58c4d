#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200): the captured groups' gradients copied into their buffers before the check,
# so the check reads the same tensors every step and is replayed from a graph (session_zz3 found column blocks'
# fresh gradients kept it eager): the 405M step() without refreshes, captured, against fused AdamW, with the last
# step's timeline; capture_check on the 405M GPT with refreshes and a NaN gradient at step 16 (bit for bit); the
# 43M GPT, 300 steps, AdamW / SCAO eager / SCAO captured in one call (bench.compare).
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/session_zz4}
W=/tmp/session_zz4_work
mkdir -p "$OUT" "$W"
export TRITON_CACHE_DIR=$W/triton_cache
timeout 110 python3 -m bench.step_profile --size large --cases scao_norefresh,adamw --steps 30 --profile-steps 5 \
  --scao-kwargs '{"cuda_graph": true}' --out "$OUT/prof_graph.json" > "$W/prof_graph.log" 2>&1
echo "profile rc=$?"; grep -E "step\(\)|GPU busy|inside step" "$W/prof_graph.log" | cut -c1-200 | head -8
python3 - "$OUT/prof_graph.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
tl = d["cases"]["scao_norefresh"]["torch_profile"]["step_windows"].get("last_step_timeline_us", [])
end = 0.0
for kind, t, dur, name in tl:  # GPU work after an idle gap > 15 us, and the host calls around it
    if kind == "gpu":
        if t - end > 15:
            print(f"  gap {t - end:7.1f} us before {name[:50]} at {t:.0f}")
        end = max(end, t + dur)
    elif dur > 30:
        print(f"    host {name[:30]} at {t:.0f} for {dur:.0f} us")
PY
timeout 150 python3 -m bench.capture_check --size large --steps 24 --nan-at 16 --out "$OUT/capture_large.json" \
  > "$W/capture_large.log" 2>&1
echo "capture rc=$?"
python3 -c "import json; d=json.load(open('$OUT/capture_large.json')); print({k: d[k] for k in ('bit_exact','first_weight_mismatch_step','state_mismatch_counts','graph_counts','graph_failed_groups','check_captured','skipped_steps','steps_taken','step_ms_median')})"
G='graph={"cuda_graph": true}'
timeout 170 python3 -m bench.compare --size small --optimizers adamw,scao,graph --scao-variant "$G" \
  --lrs "adamw=5e-4;scao=1e-3;graph=1e-3" --steps 300 --eval-every 300 --eval-batches 4 --no-report \
  --out "$W/small" > "$W/small.log" 2>&1; echo "small rc=$?"
grep -h "^\[run" "$W/small.log"
tar czf "$OUT/session_zz4.tgz" -C "$W" --exclude triton_cache .
