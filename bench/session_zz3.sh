#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200): the non-finite check replayed from a CUDA graph (one launch instead of
# some ten) and the step inputs uploaded in one copy: the 405M step() without refreshes, captured, against fused
# AdamW, with the last step's timeline; capture_check on the 405M GPT with refreshes and a NaN gradient at step 16
# (the replayed check must catch it; bit for bit against eager).
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/session_zz3}
W=/tmp/session_zz3_work
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
tar czf "$OUT/session_zz3.tgz" -C "$W" --exclude triton_cache .
