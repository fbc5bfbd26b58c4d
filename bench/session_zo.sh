#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200): the launch settings chosen from session_zn's sweep (residual_sumsq tiles
# 128x64; complement_update 4 warps applying, 8 returning). bench.kernels verifies and times the low-rank, apply
# and AdamW kernels; the 405M step() without refreshes, captured with fused AdamW in the same process, then eager;
# capture_check on the 43M (bit for bit); the 43M training run, AdamW against captured scao_dist (README table).
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/session_zo}
W=/tmp/session_zo_work
mkdir -p "$OUT" "$W"
export TRITON_CACHE_DIR=$W/triton_cache
timeout 150 python3 -m bench.kernels --only complement_update,residual_sumsq,residual_stats,apply_update_,adamw_ \
  --out "$OUT/kernels.json" > "$OUT/kernels.log" 2>&1
echo "kernels rc=$?"; grep -E "verification|GB/s" "$OUT/kernels.log" | head -20
prof() {  # name, cases, extra SCAO kwargs
  timeout 120 python3 -m bench.step_profile --size large --cases "$2" --steps 20 --profile-steps 5 \
    --scao-kwargs "$3" --out "$OUT/prof_$1.json" > "$W/prof_$1.log" 2>&1; echo "profile $1 rc=$?"
  grep -E "step\(\)|GPU busy" "$W/prof_$1.log" | cut -c1-140
}
prof graph scao_norefresh,adamw '{"cuda_graph": true}'
prof eager scao_norefresh '{}'
timeout 100 python3 -m bench.capture_check --size small --steps 20 --out "$W/capture_small.json" \
  > "$W/capture_small.log" 2>&1
echo "capture rc=$?"
python3 -c "import json; d=json.load(open('$W/capture_small.json')); print({k: d[k] for k in ('bit_exact','first_weight_mismatch_step','state_mismatch_counts','graph_counts','step_ms_median')})"
G='graph={"cuda_graph": true}'
timeout 130 python3 -m bench.compare --size small --optimizers adamw,graph --scao-variant "$G" \
  --lrs "adamw=5e-4;graph=1e-3" --steps 300 --eval-every 300 --eval-batches 4 --no-report \
  --out "$W/small" > "$W/small.log" 2>&1; echo "small rc=$?"
grep -h "^\[run" "$W/small.log"
tar czf "$OUT/session_zo.tgz" -C "$W" --exclude triton_cache .
