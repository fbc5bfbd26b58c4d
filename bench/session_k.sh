#!/usr/bin/env bash
# One GPU call (device tool, carry [".whl"]; about 6 minutes) for the runs issue 9 still owed after
# session 3, 43M GPT, 1500 steps, losses only (the runs share the GPU, so their ms/step are not timings):
#   1. scao 0.2.4's lr grid in this harness: 5e-4, 1e-3, 2e-3 (seed 0);
#   2. second seeds of FlashAdamW (5e-4) and heavyball SOAP (1e-3) at their best lrs.
# Everything lands in $OUT/session_k.tgz. Knob: BUDGET_S (per process).
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/session_k}
W=/tmp/session_k_work
mkdir -p "$OUT" "$W/q"
source bench/use_wheels.sh "FlashAdamW, heavyball SOAP and scao 0.2.4 will be reported as not installed"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
base=(--size small --steps 1500 --eval-every 100 --eval-batches 8 --no-report)
B=${BUDGET_S:-420}
timeout $((B + 40)) python3 -m bench.compare --optimizers scao024 --lrs "scao024=5e-4,1e-3,2e-3" --concurrent 3 \
  "${base[@]}" --time-budget-s "$B" --out "$W/q" > "$W/q/scao024.log" 2>&1 &
timeout $((B + 40)) python3 -m bench.compare --optimizers flash,soap --lrs "flash=5e-4;soap=1e-3" --seeds 1 \
  --concurrent 2 "${base[@]}" --time-budget-s "$B" --out "$W/q" > "$W/q/peers.log" 2>&1 &
wait
grep -h "^\[run" "$W"/q/*.log
python3 -m bench.report "$W/q" --out "$W/r" > /dev/null 2> "$W/report.err" || cat "$W/report.err"
tar czf "$OUT/session_k.tgz" -C "$W" .
sed -n '/^### Headline/,/^### Ratios/p' "$W/r/results.md" | head -30
