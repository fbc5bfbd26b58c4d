#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200; about 2 minutes): the 43M step at the current code (no mid-run compiles,
# moments.BG 32), timed alone as in session_n: AdamW 5e-4 and scao_dist 1e-3, 300 steps each, one after the other.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/session_v}
mkdir -p "$OUT"
base=(--size small --steps 300 --eval-every 300 --eval-batches 4 --no-report)
for o in "adamw=5e-4" "scao=1e-3"; do
  timeout 90 python3 -m bench.compare --optimizers "${o%%=*}" --lrs "$o" "${base[@]}" --out "$OUT/t" \
    > "$OUT/t_${o%%=*}.log" 2>&1
  echo "small ${o%%=*} rc=$?"
done
grep -h "^\[run" "$OUT"/t_*.log
