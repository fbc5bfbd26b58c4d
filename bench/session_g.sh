#!/usr/bin/env bash
# One GPU call (device tool) after the batched refreshes (session 3): scao_dist's own knobs, 43M, 1500 steps.
#   1. precond_freq=5 timed alone (seed 0, phase profile): what twice the refresh work costs now;
#   2. six single-knob variants side by side on the GPU (losses only; records say "concurrent_shards"):
#      shampoo_beta 0.99, betas (0.9, 0.99), graft "norm", rank_max 256, precond_freq 3,
#      precond_freq 5 with spectral_mass 0.999.
# Everything lands in $OUT/session_g.tgz; the tables are printed. Knob: BUDGET_S (per process).
# Merge: python -m bench.report bench/results/2026-11-23-s2/small_runs.tgz bench/results/2026-11-23-s3/*.tgz
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/session_g}
W=/tmp/session_g_work
mkdir -p "$OUT" "$W/t" "$W/q"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
base=(--size small --steps 1500 --eval-every 100 --eval-batches 8 --no-report)
timeout 130 python3 -m bench.compare --optimizers scao_pf5 --scao-variant 'scao_pf5={"precond_freq":5}' \
  --lrs scao_pf5=1e-3 --profile-phases 20 "${base[@]}" --out "$W/t" > "$W/t.log" 2>&1
grep -h "^\[run" "$W/t.log"
B=${BUDGET_S:-330}
variants=(
  'scao_sb99={"shampoo_beta":0.99}'
  'scao_b99={"betas":[0.9,0.99]}'
  'scao_graft={"graft":"norm"}'
  'scao_r256={"rank_max":256}'
  'scao_pf3={"precond_freq":3}'
  'scao_pf5m999={"precond_freq":5,"spectral_mass":0.999}'
)
i=0
for v in "${variants[@]}"; do
  name=${v%%=*}
  timeout $((B + 60)) python3 -m bench.compare --optimizers "$name" --scao-variant "$v" --lrs "$name=1e-3" \
    "${base[@]}" --concurrent ${#variants[@]} --time-budget-s "$B" --max-minutes-per-run 7 --out "$W/q" \
    > "$W/q/job_$i.log" 2>&1 &
  i=$((i + 1))
done
wait
grep -h "^\[run" "$W"/q/job_*.log
python3 -m bench.report "$W/t" "$W/q" --out "$W/r" > /dev/null 2> "$W/report.err" || cat "$W/report.err"
tar czf "$OUT/session_g.tgz" -C "$W" .
sed -n '/^### Headline/,/^### Ratios/p;/Where scao_dist/,/step()/p' "$W/r/results.md"
