#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200): the update's factor X_u in bf16 against the bf16 basis (KronGroup.u_dtype):
# the complement kernel against its twin (bench.kernels, the new "shared16" cases) and timed with and without it
# (the 405M step's case); the 405M step() without refreshes, captured, against fused AdamW; capture_check on the
# 405M GPT with refreshes (bit for bit).
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/session_zz7}
W=/tmp/session_zz7_work
mkdir -p "$OUT" "$W"
export TRITON_CACHE_DIR=$W/triton_cache
timeout 150 python3 -m bench.kernels --only complement_update --match "bf16 Q_R, bf16 M" --out "$OUT/kernels_cu.json" \
  > "$OUT/kernels_cu.log" 2>&1
echo "complement rc=$?"; grep -E "verif|mismatch|GB/s" "$OUT/kernels_cu.log" | head -6
timeout 110 python3 -m bench.step_profile --size large --cases scao_norefresh,adamw --steps 30 --profile-steps 5 \
  --scao-kwargs '{"cuda_graph": true}' --out "$OUT/prof_graph.json" > "$W/prof_graph.log" 2>&1
echo "profile rc=$?"; grep -E "step\(\)|GPU busy|inside step|_complement|_ema|_sumsq" "$W/prof_graph.log" | cut -c1-160 | head -10
timeout 150 python3 -m bench.capture_check --size large --steps 24 --out "$OUT/capture_large.json" \
  > "$W/capture_large.log" 2>&1
echo "capture rc=$?"
python3 -c "import json; d=json.load(open('$OUT/capture_large.json')); print({k: d[k] for k in ('bit_exact','first_weight_mismatch_step','state_mismatch_counts','graph_counts','graph_failed_groups','skipped_steps','steps_taken','step_ms_median')})"
tar czf "$OUT/session_zz7.tgz" -C "$W" --exclude triton_cache .
