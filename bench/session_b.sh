#!/usr/bin/env bash
# One GPU call (device tool, carry [".whl"]): where scao_dist's step time goes, then the timed rows.
#   1. bench.step_profile on the 405M and 43M GPTs: step() alone (default, refreshes off, fused AdamW),
#      launches/syncs per step, top operators by host and device time, basis-failure counters;
#   2. gpu_session.sh small with the quality contenders (AdamW, Muon, scao_dist), 1500 steps, timed alone;
#   3. gpu_session.sh large (405M, 40 steps) with AdamW, FlashAdamW, Muon and scao_dist.
# Everything lands in $OUT/session_b.tgz (plus the tables on stdout). Knobs: SMALL_WALL, LARGE_WALL.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/session_b}
W=/tmp/session_b_work
mkdir -p "$OUT" "$W"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
for s in large small; do
  timeout 200 python3 -m bench.step_profile --size "$s" --out "$W/step_$s.json" 2>&1 | grep -v USDT > "$W/step_$s.log"
  echo "step_profile $s rc=$?"; grep -A3 "^==" "$W/step_$s.log" | grep -v "^--"
done
OUT=$W/small WALL_S=${SMALL_WALL:-270} OPTS=adamw,muon,scao LRS="adamw=5e-4;muon=2e-3;scao=1e-3" \
  bash bench/gpu_session.sh small > "$W/small.out" 2>&1
OUT=$W/large WALL_S=${LARGE_WALL:-150} OPTS=adamw,flash,muon,scao LRS="adamw=5e-4;flash=5e-4;muon=2e-3;scao=1e-3" \
  bash bench/gpu_session.sh large > "$W/large.out" 2>&1
tar czf "$OUT/session_b.tgz" -C "$W" .
sed -n '/brief (same numbers)/,$p' "$W/small.out" "$W/large.out"
