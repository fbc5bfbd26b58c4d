#!/usr/bin/env bash
# One GPU call (device tool, carry [".whl"]): an A/B of where the Nystrom Gram is diagonalised, then
# quality runs that share the GPU (losses only; every record says "concurrent_shards", and the report
# shows no timing for them):
#   - scao_dist's lr grid around its 1e-3 (5e-4, 2e-3), Muon's (1e-3, 4e-3) and AdamW's (2.5e-4, 1e-3);
#   - the second seed of the headline rows (AdamW 5e-4, Muon 2e-3, scao_dist 1e-3);
#   - scao_dist's own knob: precond_freq 5.
# Everything lands in $OUT/session_c.tgz; the tables are printed. Knob: BUDGET_S (per process).
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/session_c}
W=/tmp/session_c_work
mkdir -p "$OUT" "$W/q"
source bench/use_wheels.sh "flashoptim and heavyball runs will be reported as not installed"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
for e in 0 256; do
  SCAO_HOST_EIGH_MAX=$e timeout 100 python3 -m bench.step_profile --size small --cases scao \
    --out "$W/eigh_$e.json" 2>&1 | grep -v USDT > "$W/eigh_$e.log"
  echo "SCAO_HOST_EIGH_MAX=$e: $(grep '^==' "$W/eigh_$e.log")"
done
python3 -c "import json; [print(e, json.load(open(f'$W/eigh_{e}.json'))['cases']['scao']['counters']) for e in (0, 256)]"
B=${BUDGET_S:-430}
common=(--size small --steps 1500 --eval-every 100 --eval-batches 8 --out "$W/q" --no-report --concurrent 6
        --time-budget-s "$B" --max-minutes-per-run 7)
jobs=(
  "--optimizers scao --lrs scao=5e-4"
  "--optimizers scao --lrs scao=2e-3"
  "--optimizers muon,adamw --lrs muon=1e-3;adamw=1e-3"
  "--optimizers muon,adamw --lrs muon=4e-3;adamw=2.5e-4"
  "--optimizers adamw,muon,scao --lrs adamw=5e-4;muon=2e-3;scao=1e-3 --seeds 1"
  "--optimizers scao_pf5 --scao-variant scao_pf5={\"precond_freq\":5} --lrs scao_pf5=1e-3"
)
i=0
for j in "${jobs[@]}"; do
  # shellcheck disable=SC2086
  read -r -a a <<< "$j"
  timeout $((B + 60)) python3 -m bench.compare "${a[@]}" "${common[@]}" > "$W/q/job_$i.log" 2>&1 &
  i=$((i + 1))
done
wait
grep -h "^\[run\|^\[done" "$W"/q/job_*.log
python3 -m bench.report "$W/q" --out "$W/q" > /dev/null 2> "$W/report.err" || cat "$W/report.err"
tar czf "$OUT/session_c.tgz" -C "$W" .
sed -n '/^## /,$p' "$W/q/results.md" | head -80
