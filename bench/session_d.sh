#!/usr/bin/env bash
# One GPU call (device tool, carry [".whl"]): scao_dist's 43M headline row re-timed alone (seed 0,
# phase profile), then the second seed of Muon 2e-3 and scao_dist 1e-3 side by side (losses only).
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/session_d}
W=/tmp/session_d_work
mkdir -p "$OUT" "$W/t" "$W/q"
common=(--size small --steps 1500 --eval-every 100 --eval-batches 8 --no-report)
timeout 150 python3 -m bench.compare --optimizers scao --lrs scao=1e-3 --profile-phases 20 "${common[@]}" \
  --out "$W/t" > "$W/t.log" 2>&1
grep -h "^\[run" "$W/t.log"
timeout 200 python3 -m bench.compare --optimizers muon --lrs muon=2e-3 --seeds 1 --concurrent 2 "${common[@]}" \
  --out "$W/q" > "$W/q1.log" 2>&1 &
timeout 200 python3 -m bench.compare --optimizers scao --lrs scao=1e-3 --seeds 1 --concurrent 2 "${common[@]}" \
  --out "$W/q" > "$W/q2.log" 2>&1 &
wait
grep -h "^\[run" "$W/q1.log" "$W/q2.log"
python3 -m bench.report "$W/t" --out "$W/t" > /dev/null 2>&1
tar czf "$OUT/session_d.tgz" -C "$W" .
sed -n '/Where scao_dist/,/step()/p' "$W/t/results.md"
