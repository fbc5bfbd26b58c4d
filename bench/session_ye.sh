#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200), 2026-12-03: why session_yb's fp16 products lost. bench.factor_dtype_probe in
# this tree and in ab_f16/ (`git archive HEAD scao_dist bench | tar x -C ab_f16`, then `patch -p1 <
# bench/results/2026-12-03/yb/f16_products.patch`): the applied complement kernel with its factors in each dtype,
# and (ab_f16) the fp16 conversions alone.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/session_ye}
W=/tmp/session_ye_work
mkdir -p "$OUT" "$W"
export TRITON_CACHE_DIR=$W/triton_cache
for T in main f16; do
  case $T in f16) D=ab_f16;; *) D=.;; esac
  (cd "$D" && timeout 150 python3 -m bench.factor_dtype_probe --out "$OUT/probe_$T.json" > "$W/probe_$T.log" 2>&1)
  echo "probe $T rc=$?"; tail -8 "$W/probe_$T.log"
done
tar czf "$OUT/session_ye.tgz" -C "$W" --exclude triton_cache .
