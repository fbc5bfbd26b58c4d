#!/usr/bin/env bash
# GPU call for issues 5 and 9 in the session of 2026-12-02 (device tool, carry [".whl"]; under 10 minutes):
#   1. diag/complement_exact.py where present (a one-off look at complement_update's one exact-case mismatch);
#   2. bench.kernels for the low-rank kernels alone: verification (with the dense applied case now compared on
#      the weights' values) and a block-size / num_warps sweep;
#   3. 405M, 40 steps (gpu_session.sh large): AdamW, FlashAdamW, Muon, scao_dist side by side;
#   4. 43M, 300 steps each, timed alone one after the other: AdamW 5e-4, Muon 2e-3, scao_dist 1e-3 (phase profile).
# Each stage writes straight into $OUT; summaries last.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/session_n}
mkdir -p "$OUT/t"
stamp() { echo "[$(date +%T)] $*"; }
source bench/use_wheels.sh "FlashAdamW will be reported as not installed"
if [[ -f diag/complement_exact.py ]]; then
  timeout 60 python3 diag/complement_exact.py > "$OUT/diag.log" 2>&1; stamp "diag rc=$?"
fi
timeout 150 python3 -m bench.kernels --only complement_update,residual_sumsq --sweep --rep 40 --warmup 10 \
  --out "$OUT/kernels_lowrank.json" > "$OUT/kernels_lowrank.log" 2>&1
stamp "kernels rc=$?"
OUT=$OUT/large WALL_S=${LARGE_WALL:-200} OPTS=adamw,flash,muon,scao LRS="adamw=5e-4;flash=5e-4;muon=2e-3;scao=1e-3" \
  bash bench/gpu_session.sh large > "$OUT/large.out" 2>&1
stamp "large rc=$?"
base=(--size small --steps 300 --eval-every 300 --eval-batches 4 --no-report)
for o in "adamw=5e-4" "muon=2e-3" "scao=1e-3"; do
  extra=(); [[ $o == scao* ]] && extra=(--profile-phases 20)
  timeout 60 python3 -m bench.compare --optimizers "${o%%=*}" --lrs "$o" "${extra[@]}" "${base[@]}" --out "$OUT/t" \
    > "$OUT/t_${o%%=*}.log" 2>&1
  stamp "small ${o%%=*} rc=$?"
done
cat "$OUT/diag.log" 2>/dev/null | head -40
grep -E "^verification|^  verify|sweep|^\| " "$OUT/kernels_lowrank.log" | head -30
grep -h "^\[run" "$OUT"/t_*.log
sed -n '/brief (same numbers)/,$p' "$OUT/large.out" | head -30
