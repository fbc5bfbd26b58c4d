#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200), 2026-12-03: the projections' coefficient factors in bf16 against the bf16
# basis (KronGroup.p_dtype): every low-rank product of the step one exact bf16 product. The low-rank kernels
# against their twins (bench.kernels); the session's start (HEAD before the change, in ab_old/ by `git archive
# HEAD scao_dist bench | tar x -C ab_old`) against this tree, in one call: the 405M step() without refreshes,
# captured, fused AdamW in each process, twice each; the 43M GPT, 300 steps, AdamW and SCAO captured
# (bench.compare: held-out loss and ms/step), each tree; capture_check on the 405M GPT with a NaN gradient at
# step 16 (bit for bit).
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/session_yf}
W=/tmp/session_yf_work
mkdir -p "$OUT" "$W"
export TRITON_CACHE_DIR=$W/triton_cache
G='graph={"cuda_graph": true}'
timeout 150 python3 -m bench.kernels --only complement_update,residual_sumsq,residual_stats --out "$OUT/kernels.json" \
  > "$W/kernels.log" 2>&1
echo "kernels rc=$?"; grep -E "verification|mismatch" "$W/kernels.log" | head -5
for T in old new old2 new2; do
  case $T in old*) D=ab_old;; *) D=.;; esac
  (cd "$D" && timeout 100 python3 -m bench.step_profile --size large --cases scao_norefresh,adamw --steps 30 \
    --profile-steps 3 --scao-kwargs '{"cuda_graph": true}' --out "$OUT/prof_$T.json" > "$W/prof_$T.log" 2>&1)
  echo "profile $T rc=$?"; grep -E "step\(\)|inside step|_complement|_sumsq" "$W/prof_$T.log" | cut -c1-140 | head -6
done
for T in old new; do
  case $T in old*) D=ab_old;; *) D=.;; esac
  (cd "$D" && timeout 120 python3 -m bench.compare --size small --optimizers adamw,graph --scao-variant "$G" \
    --lrs "adamw=5e-4;graph=1e-3" --steps 300 --eval-every 300 --eval-batches 4 --no-report \
    --out "$W/small_$T" > "$W/small_$T.log" 2>&1); echo "small $T rc=$?"
  grep -h "^\[run.*ok" "$W/small_$T.log"
done
timeout 150 python3 -m bench.capture_check --size large --steps 24 --nan-at 16 --out "$OUT/capture_large.json" \
  > "$W/capture_large.log" 2>&1
echo "capture rc=$?"
python3 -c "import json; d=json.load(open('$OUT/capture_large.json')); print({k: d.get(k) for k in ('bit_exact','first_weight_mismatch_step','state_mismatch_counts','graph_counts','skipped_steps','steps_taken')})"
tar czf "$OUT/session_yf.tgz" -C "$W" --exclude triton_cache .
