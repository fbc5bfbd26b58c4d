#!/usr/bin/env bash
# One GPU call (device tool) deciding scao_dist's default precond_freq (session 3), 43M, 1500 steps:
#   1. precond_freq=3 timed alone (seed 0, phase profile);
#   2. precond_freq 3 and 5, seed 1, side by side on the GPU (losses only).
# Everything lands in $OUT/session_h.tgz. Knob: BUDGET_S (per process of step 2).
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/session_h}
W=/tmp/session_h_work
mkdir -p "$OUT" "$W/t" "$W/q"
base=(--size small --steps 1500 --eval-every 100 --eval-batches 8 --no-report)
pf3='scao_pf3={"precond_freq":3}'
pf5='scao_pf5={"precond_freq":5}'
timeout 140 python3 -m bench.compare --optimizers scao_pf3 --scao-variant "$pf3" --lrs scao_pf3=1e-3 \
  --profile-phases 20 "${base[@]}" --out "$W/t" > "$W/t.log" 2>&1
grep -h "^\[run" "$W/t.log"
B=${BUDGET_S:-170}
for v in "$pf3" "$pf5"; do
  name=${v%%=*}
  timeout $((B + 40)) python3 -m bench.compare --optimizers "$name" --scao-variant "$v" --lrs "$name=1e-3" --seeds 1 \
    "${base[@]}" --concurrent 2 --time-budget-s "$B" --out "$W/q" > "$W/q/$name.log" 2>&1 &
done
wait
grep -h "^\[run" "$W"/q/*.log
python3 -m bench.report "$W/t" "$W/q" --out "$W/r" > /dev/null 2> "$W/report.err" || cat "$W/report.err"
tar czf "$OUT/session_h.tgz" -C "$W" .
sed -n '/Where scao_dist/,/step()/p' "$W/r/results.md"
