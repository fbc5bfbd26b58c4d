#!/usr/bin/env bash
# The GPU call that finishes issue 9's owed runs (device tool, carry [".whl"]), like session_c.sh:
#   1. scao_dist's 43M row timed alone at the current commit (seed 0, phase profile);
#   2. side by side on the GPU (losses only; records say "concurrent_shards"): the FlashAdamW and
#      heavyball SOAP lr grids around DESIGN.md's best lrs plus their second seeds, and scao_dist's
#      knobs spectral_mass 0.999 and precond_freq 5 (second seed).
# Everything lands in $OUT/session_e.tgz; the tables are printed. Knob: BUDGET_S (per process).
# Merge with the earlier runs: python -m bench.report bench/results/2026-11-23-s2/small_runs.tgz <files_at>/...
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/session_e}
W=/tmp/session_e_work
mkdir -p "$OUT" "$W/t" "$W/q"
source bench/use_wheels.sh "flashoptim and heavyball runs will be reported as not installed"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
base=(--size small --steps 1500 --eval-every 100 --eval-batches 8 --no-report)
timeout 130 python3 -m bench.compare --optimizers scao --lrs scao=1e-3 --profile-phases 20 "${base[@]}" \
  --out "$W/t" > "$W/t.log" 2>&1
grep -h "^\[run" "$W/t.log"
B=${BUDGET_S:-380}
jobs=(
  "--optimizers flash --lrs flash=2.5e-4"
  "--optimizers flash --lrs flash=1e-3"
  "--optimizers soap --lrs soap=5e-4"
  "--optimizers soap --lrs soap=2e-3"
  "--optimizers flash,soap --lrs flash=5e-4;soap=1e-3 --seeds 1"
  "--optimizers scao_m999 --scao-variant scao_m999={\"spectral_mass\":0.999} --lrs scao_m999=1e-3"
  "--optimizers scao_pf5 --scao-variant scao_pf5={\"precond_freq\":5} --lrs scao_pf5=1e-3 --seeds 1"
)
i=0
for j in "${jobs[@]}"; do
  read -r -a a <<< "$j"
  timeout $((B + 60)) python3 -m bench.compare "${a[@]}" "${base[@]}" --concurrent ${#jobs[@]} \
    --time-budget-s "$B" --max-minutes-per-run 7 --out "$W/q" > "$W/q/job_$i.log" 2>&1 &
  i=$((i + 1))
done
wait
grep -h "^\[run" "$W"/q/job_*.log
python3 -m bench.report "$W/t" "$W/q" --out "$W/r" > /dev/null 2> "$W/report.err" || cat "$W/report.err"
tar czf "$OUT/session_e.tgz" -C "$W" .
sed -n '/^## /,/Optimizer state/p' "$W/r/results.md"
