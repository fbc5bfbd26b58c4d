#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200): the complement's denominator from per-row and per-column roots
# (reference.complement_roots): one IEEE division per element instead of two and a square root. bench.kernels
# verifies complement_update against its twin and times it; bench.complement_probe times it against session_zm's
# kernel in one run; the 405M step() without refreshes, captured, with fused AdamW in the same process;
# capture_check on the 405M GPT (bit for bit).
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/session_zr}
W=/tmp/session_zr_work
mkdir -p "$OUT" "$W"
export TRITON_CACHE_DIR=$W/triton_cache
timeout 100 python3 -m bench.kernels --only complement_update --out "$OUT/kernels.json" > "$OUT/kernels.log" 2>&1
echo "kernels rc=$?"; grep -E "verification|GB/s" "$OUT/kernels.log" | head -6
timeout 90 python3 -m bench.complement_probe --out "$OUT/probe.json" > "$OUT/probe.log" 2>&1
echo "probe rc=$?"; grep -E "==|library|copy of" "$OUT/probe.log"
timeout 100 python3 -m bench.step_profile --size large --cases scao_norefresh,adamw --steps 30 --profile-steps 5 \
  --scao-kwargs '{"cuda_graph": true}' --out "$OUT/prof_graph.json" > "$W/prof_graph.log" 2>&1
echo "profile rc=$?"; grep -E "step\(\)|GPU busy|inside step|_complement" "$W/prof_graph.log" | cut -c1-160
timeout 150 python3 -m bench.capture_check --size large --steps 24 --out "$OUT/capture_large.json" \
  > "$W/capture_large.log" 2>&1
echo "capture rc=$?"
python3 -c "import json; d=json.load(open('$OUT/capture_large.json')); print({k: d[k] for k in ('bit_exact','first_weight_mismatch_step','state_mismatch_counts','graph_counts','graph_failed_groups','step_ms_median')})"
tar czf "$OUT/session_zr.tgz" -C "$W" --exclude triton_cache .
