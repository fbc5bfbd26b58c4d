#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200), the session's last: the captured step with the table upload ahead of the
# keys and the groups whose gradients are the buffers' views replayed before the others' gradient copy. The 405M
# step() without refreshes, captured, with fused AdamW in the same process; capture_check on the 405M GPT (bit for
# bit); the eager 405M step; the 43M GPT's 300-step training run (AdamW, eager and captured scao_dist in one call).
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/session_zv}
W=/tmp/session_zv_work
mkdir -p "$OUT" "$W"
export TRITON_CACHE_DIR=$W/triton_cache
timeout 110 python3 -m bench.step_profile --size large --cases scao_norefresh,adamw --steps 30 --profile-steps 5 \
  --scao-kwargs '{"cuda_graph": true}' --out "$OUT/prof_graph.json" > "$W/prof_graph.log" 2>&1
echo "profile rc=$?"; grep -E "step\(\)|GPU busy|inside step" "$W/prof_graph.log" | cut -c1-220
timeout 150 python3 -m bench.capture_check --size large --steps 24 --out "$OUT/capture_large.json" \
  > "$W/capture_large.log" 2>&1
echo "capture rc=$?"
python3 -c "import json; d=json.load(open('$OUT/capture_large.json')); print({k: d[k] for k in ('bit_exact','first_weight_mismatch_step','state_mismatch_counts','graph_counts','graph_failed_groups','step_ms_median')})"
timeout 90 python3 -m bench.step_profile --size large --cases scao_norefresh --steps 20 --profile-steps 3 \
  --out "$OUT/prof_eager.json" > "$W/prof_eager.log" 2>&1
echo "eager rc=$?"; grep -E "step\(\)|GPU busy|inside step" "$W/prof_eager.log" | cut -c1-200
G='graph={"cuda_graph": true}'
timeout 170 python3 -m bench.compare --size small --optimizers adamw,scao,graph --scao-variant "$G" \
  --lrs "adamw=5e-4;scao=1e-3;graph=1e-3" --steps 300 --eval-every 300 --eval-batches 4 --no-report \
  --out "$W/small" > "$W/small.log" 2>&1; echo "small rc=$?"
grep -h "^\[run" "$W/small.log"
tar czf "$OUT/session_zv.tgz" -C "$W" --exclude triton_cache .
