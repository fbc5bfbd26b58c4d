#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200), 2026-12-03: does one product fewer pay in the complement kernel? The applied
# kernel timed with its factors in different dtypes (bench.factor_dtype_probe: X_m fp32 split in registers, the
# step's; X_m bf16, two plain bf16 products; both fp32). Then the 405M step() captured, fused AdamW in each
# process: this tree against ab_xm16/ (`git archive HEAD scao_dist bench | tar x -C ab_xm16`, then
# KronGroup._complement_factors passing M's factor in bf16 as it does the update's: an experiment, not kept).
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/session_yd}
W=/tmp/session_yd_work
mkdir -p "$OUT" "$W"
export TRITON_CACHE_DIR=$W/triton_cache
timeout 120 python3 -m bench.factor_dtype_probe --out "$OUT/probe.json" > "$W/probe.log" 2>&1
echo "probe rc=$?"; cat "$W/probe.log" | tail -5
for T in main xm16 main2 xm162; do
  case $T in xm16*) D=ab_xm16;; *) D=.;; esac
  (cd "$D" && timeout 100 python3 -m bench.step_profile --size large --cases scao_norefresh,adamw --steps 30 \
    --profile-steps 3 --scao-kwargs '{"cuda_graph": true}' --out "$OUT/prof_$T.json" > "$W/prof_$T.log" 2>&1)
  echo "profile $T rc=$?"; grep -E "step\(\)|inside step|_complement" "$W/prof_$T.log" | cut -c1-140 | head -5
done
tar czf "$OUT/session_yd.tgz" -C "$W" --exclude triton_cache .
