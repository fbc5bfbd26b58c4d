#!/usr/bin/env bash
# The GPU call owed after session 3 (device tool, carry [".whl"]; about 9 minutes):
#   1. bench.step_profile on the 405M and 43M GPTs: the commits after 697743c (row-split weights
#      stepped in place, refresh batches under grad_release, one factor decode per refresh) and the
#      new default precond_freq 5;
#   2. 43M, 1500 steps, timed alone one after the other in this call: AdamW 5e-4, Muon 2e-3,
#      scao_dist 1e-3 (default) with the phase profile;
#   3. 405M, 40 steps (gpu_session.sh large): AdamW, FlashAdamW, Muon, scao_dist (default);
#   4. side by side (losses only): FlashAdamW 5e-4 and heavyball SOAP 1e-3 with seed 0 in this harness.
# Everything lands in $OUT/session_i.tgz. Knobs: LARGE_WALL, BUDGET_S.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/session_i}
W=/tmp/session_i_work
mkdir -p "$OUT" "$W/t" "$W/q"
source bench/use_wheels.sh "FlashAdamW and heavyball SOAP will be reported as not installed"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
for s in large small; do
  timeout 150 python3 -m bench.step_profile --size "$s" --steps 20 --out "$W/step_$s.json" 2>&1 | grep -v USDT \
    > "$W/step_$s.log"
  echo "step_profile $s rc=$?"; grep -A3 "^==" "$W/step_$s.log" | grep -v "^--"
done
base=(--size small --steps 1500 --eval-every 100 --eval-batches 8 --no-report)
for o in "adamw=5e-4" "muon=2e-3" "scao=1e-3"; do
  extra=(); [[ $o == scao* ]] && extra=(--profile-phases 20)
  timeout 140 python3 -m bench.compare --optimizers "${o%%=*}" --lrs "$o" "${extra[@]}" "${base[@]}" --out "$W/t" \
    > "$W/t_${o%%=*}.log" 2>&1
done
grep -h "^\[run" "$W"/t_*.log
OUT=$W/large WALL_S=${LARGE_WALL:-170} OPTS=adamw,flash,muon,scao LRS="adamw=5e-4;flash=5e-4;muon=2e-3;scao=1e-3" \
  bash bench/gpu_session.sh large > "$W/large.out" 2>&1
B=${BUDGET_S:-200}
for o in "flash=5e-4" "soap=1e-3"; do
  timeout $((B + 40)) python3 -m bench.compare --optimizers "${o%%=*}" --lrs "$o" "${base[@]}" --concurrent 2 \
    --time-budget-s "$B" --out "$W/q" > "$W/q/${o%%=*}.log" 2>&1 &
done
wait
grep -h "^\[run" "$W"/q/*.log
python3 -m bench.report "$W/t" "$W/q" --out "$W/r" > /dev/null 2> "$W/report.err" || cat "$W/report.err"
tar czf "$OUT/session_i.tgz" -C "$W" .
sed -n '/^### Headline/,/^### Ratios/p;/Where scao_dist/,/step()/p' "$W/r/results.md"
sed -n '/brief (same numbers)/,$p' "$W/large.out" | head -40
