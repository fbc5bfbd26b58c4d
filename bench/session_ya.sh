#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200), 2026-12-03: the low-rank products in scaled fp16 under TF32
# (lowrank.f16_product). The kernels against their twins on the GPU (bench.kernels, the three low-rank kernels),
# then the session's start (1c7dd74, in ab_old/ by `git archive 1c7dd74 scao_dist bench | tar x -C ab_old`)
# against this tree in one call: the 405M step() without refreshes, captured, fused AdamW in each process;
# capture_check on the 405M GPT with a NaN gradient at step 16 (bit for bit, eager against graphs).
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/session_ya}
W=/tmp/session_ya_work
mkdir -p "$OUT" "$W"
export TRITON_CACHE_DIR=$W/triton_cache
timeout 200 python3 -m bench.kernels --only complement_update,residual_sumsq,residual_stats --out "$OUT/kernels.json" \
  > "$W/kernels.log" 2>&1
echo "kernels rc=$?"; grep -E "verif|mismatch|fail|GB/s|\| (complement|residual)" "$W/kernels.log" | cut -c1-200 | head -30
for T in old new; do
  if [ "$T" = old ]; then D=ab_old; else D=.; fi
  (cd "$D" && timeout 100 python3 -m bench.step_profile --size large --cases scao_norefresh,adamw --steps 30 \
    --profile-steps 3 --scao-kwargs '{"cuda_graph": true}' --out "$OUT/prof_$T.json" > "$W/prof_$T.log" 2>&1)
  echo "profile $T rc=$?"; grep -E "step\(\)|inside step|GPU busy|_complement|_ema|_sumsq|_stats" "$W/prof_$T.log" | cut -c1-160 | head -10
done
timeout 150 python3 -m bench.capture_check --size large --steps 24 --nan-at 16 --out "$OUT/capture_large.json" \
  > "$W/capture_large.log" 2>&1
echo "capture rc=$?"
python3 -c "import json; d=json.load(open('$OUT/capture_large.json')); print({k: d.get(k) for k in ('bit_exact','first_weight_mismatch_step','state_mismatch_counts','graph_counts','graph_failed_groups','skipped_steps','steps_taken','step_ms_median')})"
tar czf "$OUT/session_ya.tgz" -C "$W" --exclude triton_cache .
