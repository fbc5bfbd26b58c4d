#!/usr/bin/env bash
# GPU call for issue 9 in the session of 2026-12-02 (device tool, carry [".whl"]; under 10 minutes). The quality
# runs whose archives were lost with session 4's checkout, again, all sharing the GPU (losses only):
#   FlashAdamW 5e-4 and heavyball SOAP 1e-3, seeds 0 and 1 (the headline's second seeds);
#   scao 0.2.4 (fp32 EMA, its default) at 2.5e-4, 5e-4, 1e-3, 2e-3, seed 0 (its lr grid in this harness).
# 43M GPT, 1500 steps, eight processes. Plus diag/complement_exact.py where present. Knob: BUDGET_S.
# Everything lands in $OUT/session_o.tgz (the device tool brings back few files); the run lines are printed last.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/session_o}
W=/tmp/session_o_work
mkdir -p "$OUT" "$W/q"
source bench/use_wheels.sh "scao 0.2.4, FlashAdamW and heavyball SOAP will be reported as not installed"
base=(--size small --steps 1500 --eval-every 100 --eval-batches 8 --no-report --concurrent 8)
B=${BUDGET_S:-470}
for i in 0 1 2 3; do
  timeout $((B + 30)) python3 -m bench.compare --optimizers flash,soap --lrs "flash=5e-4;soap=1e-3" --seeds 0,1 \
    --shard "$i/4" "${base[@]}" --time-budget-s "$B" --out "$W/q" > "$W/q/peers_$i.log" 2>&1 &
  timeout $((B + 30)) python3 -m bench.compare --optimizers scao024 --lrs "scao024=2.5e-4,5e-4,1e-3,2e-3" \
    --shard "$i/4" "${base[@]}" --time-budget-s "$B" --out "$W/q" > "$W/q/scao024_$i.log" 2>&1 &
done
if [[ -f diag/complement_exact.py ]]; then
  PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} timeout 90 python3 diag/complement_exact.py > "$W/diag.log" 2>&1
fi
wait
tar czf "$OUT/session_o.tgz" -C "$W" .
head -40 "$W/diag.log" 2>/dev/null
grep -h "^\[run" "$W"/q/*.log | grep -v "\.\.\.$"
