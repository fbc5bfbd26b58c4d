#!/usr/bin/env bash
# One GPU call (device tool, carry [".whl"]) after the batched refreshes (session 3):
#   1. bench.step_profile on the 405M and 43M GPTs (step() alone, refreshes off, fused AdamW);
#   2. 43M, 1500 steps, timed alone one after the other: AdamW 5e-4, then scao_dist 1e-3 with the
#      phase profile (held-out loss, ms/step, refresh waits);
#   3. 405M, 40 steps (gpu_session.sh large): AdamW, FlashAdamW and scao_dist, ms/step and peak memory.
# Everything lands in $OUT/session_f.tgz; the tables are printed. Knob: LARGE_WALL.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/session_f}
W=/tmp/session_f_work
mkdir -p "$OUT" "$W/t"
source bench/use_wheels.sh "FlashAdamW will be reported as not installed"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
for s in large small; do
  timeout 150 python3 -m bench.step_profile --size "$s" --steps 20 --out "$W/step_$s.json" 2>&1 | grep -v USDT \
    > "$W/step_$s.log"
  echo "step_profile $s rc=$?"; grep -A3 "^==" "$W/step_$s.log" | grep -v "^--"
done
base=(--size small --steps 1500 --eval-every 100 --eval-batches 8 --no-report --out "$W/t")
timeout 60 python3 -m bench.compare --optimizers adamw --lrs adamw=5e-4 "${base[@]}" > "$W/t_adamw.log" 2>&1
timeout 130 python3 -m bench.compare --optimizers scao --lrs scao=1e-3 --profile-phases 20 "${base[@]}" \
  > "$W/t_scao.log" 2>&1
grep -h "^\[run" "$W"/t_*.log
python3 -m bench.report "$W/t" --out "$W/t" > /dev/null 2>&1
sed -n '/^### Headline/,/^### Ratios/p;/Where scao_dist/,/step()/p' "$W/t/results.md"
OUT=$W/large WALL_S=${LARGE_WALL:-140} OPTS=adamw,flash,scao LRS="adamw=5e-4;flash=5e-4;scao=1e-3" \
  bash bench/gpu_session.sh large > "$W/large.out" 2>&1
tar czf "$OUT/session_f.tgz" -C "$W" .
sed -n '/brief (same numbers)/,$p' "$W/large.out" | head -40
