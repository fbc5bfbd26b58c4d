#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200; about 1.5 minutes): which matrix products fill the 405M step without refreshes
# (~7.5 of its 16 GPU-busy ms, BENCHMARKS.md §0)? bench.step_profile now groups the device time by input shapes.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/session_u}
mkdir -p "$OUT"
timeout 240 python3 -m bench.step_profile --size large --cases scao_norefresh --steps 10 --profile-steps 5 \
  --out "$OUT/step_large_shapes.json" > "$OUT/step_large_shapes.log" 2>&1
echo "rc=$?"
grep -E "^== |GPU busy" "$OUT/step_large_shapes.log"
grep -A16 "by input shapes" "$OUT/step_large_shapes.log"
