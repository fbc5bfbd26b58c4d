#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200; about 6 minutes): launch-configuration sweep of the group kernels after the
# one-variant layout of `dd0bb15` (session_r: ema_signed_ 74%, rotated_adam_ 81%, adamw_ 46% of copy). The block
# size (scale groups per program) and warps change which program computes a group, never its arithmetic, so
# any configuration gives the same bits (the verification runs first, at the shipped configuration).
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/session_s}
mkdir -p "$OUT"
timeout 240 python3 -m bench.kernels --only ema_signed_,rotated_adam_,adamw_ --sweep --rep 60 \
  --out "$OUT/kernels_sweep.json" > "$OUT/kernels_sweep.log" 2>&1
echo "kernels rc=$?"
# the low-rank tile without its product (residual_sumsq of G alone, k = 0) next to k = 16 and 128, and the low-rank
# kernels' tile / warps / pipeline-depth sweep (num_stages was not swept before)
timeout 320 python3 -m bench.kernels --only residual_sumsq,complement_update --sweep --rep 40 \
  --out "$OUT/kernels_lowrank.json" > "$OUT/kernels_lowrank.log" 2>&1
echo "lowrank rc=$?"
grep -E "^\| |sweep|verification" "$OUT/kernels_sweep.log" "$OUT/kernels_lowrank.log"
