#!/usr/bin/env bash
# GPU call (device tool, carry [".whl"]; about 4 minutes): the rest of scao 0.2.4's lr grid in this harness, 43M GPT,
# 1500 steps, seed 0, one run at a time (session_k ran 5e-4 and 1e-3, sharing the GPU; 1e-3 was cut at 1420 steps).
# Everything lands in $OUT/session_m.tgz.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/session_m}
W=/tmp/session_m_work
mkdir -p "$OUT" "$W/q"
source bench/use_wheels.sh "scao 0.2.4 will be reported as not installed"
base=(--size small --steps 1500 --eval-every 100 --eval-batches 8 --no-report)
for lr in 2.5e-4 2e-3; do
  timeout 180 python3 -m bench.compare --optimizers scao024 --lrs "scao024=$lr" "${base[@]}" --time-budget-s 160 --out "$W/q" \
    > "$W/q/scao024_$lr.log" 2>&1
done
grep -h "^\[run" "$W"/q/*.log
tar czf "$OUT/session_m.tgz" -C "$W" .
