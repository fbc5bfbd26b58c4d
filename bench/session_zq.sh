#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200): bf16 gradients for the 1-D parameters' AdamW group (its kernel widens them;
# .grad can then be a view of its buffer), the non-finite check over the captured groups' gradient buffers. bench.kernels
# verifies adamw_ (bf16 gradients included); the 405M step() without refreshes, captured, with fused AdamW in the
# same process; capture_check on the 405M GPT (bit for bit); the 43M training run with AdamW, eager and captured
# scao_dist in one call (the README table).
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/session_zq}
W=/tmp/session_zq_work
mkdir -p "$OUT" "$W"
export TRITON_CACHE_DIR=$W/triton_cache
timeout 100 python3 -m bench.kernels --only adamw_ --out "$OUT/kernels.json" > "$OUT/kernels.log" 2>&1
echo "kernels rc=$?"; grep -E "verification|GB/s" "$OUT/kernels.log" | head -5
timeout 130 python3 -m bench.step_profile --size large --cases scao_norefresh,adamw --steps 30 --profile-steps 5 \
  --scao-kwargs '{"cuda_graph": true}' --out "$OUT/prof_graph.json" > "$W/prof_graph.log" 2>&1
echo "profile rc=$?"; grep -E "step\(\)|GPU busy|inside step" "$W/prof_graph.log" | cut -c1-160
timeout 200 python3 -m bench.capture_check --size large --steps 24 --out "$OUT/capture_large.json" \
  > "$W/capture_large.log" 2>&1
echo "capture rc=$?"
python3 -c "import json; d=json.load(open('$OUT/capture_large.json')); print({k: d[k] for k in ('bit_exact','first_weight_mismatch_step','state_mismatch_counts','graph_counts','graph_failed_groups','step_ms_median')})"
G='graph={"cuda_graph": true}'
timeout 150 python3 -m bench.compare --size small --optimizers adamw,scao,graph --scao-variant "$G" \
  --lrs "adamw=5e-4;scao=1e-3;graph=1e-3" --steps 300 --eval-every 300 --eval-batches 4 --no-report \
  --out "$W/small" > "$W/small.log" 2>&1; echo "small rc=$?"
grep -h "^\[run" "$W/small.log"
tar czf "$OUT/session_zq.tgz" -C "$W" --exclude triton_cache .
