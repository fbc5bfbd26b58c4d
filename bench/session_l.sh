#!/usr/bin/env bash
# GPU call 2 of 2 for issues 5 and 9 after session 4's low-rank kernels (device tool, carry [".whl"]; about 8 min):
#   1. 405M, 40 steps (gpu_session.sh large): AdamW, FlashAdamW, Muon, scao_dist (default, precond_freq 5);
#   2. 43M, 1500 steps, timed alone one after the other in this call: AdamW 5e-4, Muon 2e-3, scao_dist 1e-3
#      (default) with the phase profile.
# Everything lands in $OUT/session_l.tgz. Knob: LARGE_WALL.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/session_l}
W=/tmp/session_l_work
mkdir -p "$OUT" "$W/t"
source bench/use_wheels.sh "FlashAdamW will be reported as not installed"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
OUT=$W/large WALL_S=${LARGE_WALL:-170} OPTS=adamw,flash,muon,scao LRS="adamw=5e-4;flash=5e-4;muon=2e-3;scao=1e-3" \
  bash bench/gpu_session.sh large > "$W/large.out" 2>&1
base=(--size small --steps 1500 --eval-every 100 --eval-batches 8 --no-report)
for o in "adamw=5e-4" "muon=2e-3" "scao=1e-3"; do
  extra=(); [[ $o == scao* ]] && extra=(--profile-phases 20)
  timeout 140 python3 -m bench.compare --optimizers "${o%%=*}" --lrs "$o" "${extra[@]}" "${base[@]}" --out "$W/t" \
    > "$W/t_${o%%=*}.log" 2>&1
done
grep -h "^\[run" "$W"/t_*.log
python3 -m bench.report "$W/t" --out "$W/r" > /dev/null 2> "$W/report.err" || cat "$W/report.err"
tar czf "$OUT/session_l.tgz" -C "$W" .
sed -n '/^### Headline/,/^### Ratios/p;/Where scao_dist/,/step()/p' "$W/r/results.md"
sed -n '/brief (same numbers)/,$p' "$W/large.out" | head -40
