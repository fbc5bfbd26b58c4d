#!/usr/bin/env bash
# GPU call (device tool, carry [".whl"]; about 6 minutes), 43M GPT, 1500 steps, losses only (the runs share the GPU):
#   1. the rest of scao 0.2.4's lr grid in this harness, seed 0: 2.5e-4 and 2e-3 (session_k ran 5e-4 and 1e-3;
#      1e-3 was cut at 1420 steps);
#   2. FlashAdamW 5e-4 and heavyball SOAP 1e-3 with seed 0 (session_e and session_k ran seed 1 at these lrs).
# Three processes share the GPU. Everything lands in $OUT/session_m.tgz. Knob: BUDGET_S (per process).
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/session_m}
W=/tmp/session_m_work
mkdir -p "$OUT" "$W/q"
source bench/use_wheels.sh "scao 0.2.4, FlashAdamW and heavyball SOAP will be reported as not installed"
base=(--size small --steps 1500 --eval-every 100 --eval-batches 8 --no-report)
B=${BUDGET_S:-330}
for i in 0 1; do
  timeout $((B + 30)) python3 -m bench.compare --optimizers scao024 --lrs "scao024=2.5e-4,2e-3" --shard "$i/3" \
    "${base[@]}" --time-budget-s "$B" --out "$W/q" > "$W/q/scao024_$i.log" 2>&1 &
done
timeout $((B + 30)) python3 -m bench.compare --optimizers flash,soap --lrs "flash=5e-4;soap=1e-3" --seeds 0 \
  --concurrent 3 "${base[@]}" --time-budget-s "$B" --out "$W/q" > "$W/q/peers.log" 2>&1 &
wait
grep -h "^\[run" "$W"/q/*.log
tar czf "$OUT/session_m.tgz" -C "$W" .
