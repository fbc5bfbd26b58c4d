#!/usr/bin/env bash
# GPU call 1 of 2 for issue 5 after session 4's low-rank kernels (device tool, carry [".whl"]; under 10 minutes):
#   1. python -m bench.kernels: every kernel against its twin on the device, then achieved bandwidth
#      against this GPU's copy bandwidth (the low-rank kernels with their TF32 products);
#   2. python -m bench.step_profile on the 405M and 43M GPTs: step() alone, ms, vs fused AdamW in the same run;
#   3. bench.scaling at N=1 on the 405M GPT, refresh_lag 1 (default) and 2: does a second step of lag take the
#      refresh waits (and the p99 spikes of the 2-GPU run) off the step?
# Each stage writes straight into $OUT (a call cut short still brings back what finished); summaries last.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/session_j}
mkdir -p "$OUT"
stamp() { echo "[$(date +%T)] $*"; }
source bench/use_wheels.sh "DeepSpeed is not needed here"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
stamp kernels
timeout 140 python3 -m bench.kernels --out "$OUT/kernels.json" --rep 100 > "$OUT/kernels.log" 2>&1
stamp "bench.kernels rc=$?"
for s in large small; do
  timeout $([[ $s == large ]] && echo 130 || echo 90) python3 -m bench.step_profile --size "$s" --steps 20 \
    --out "$OUT/step_$s.json" 2>&1 | grep -v USDT > "$OUT/step_$s.log"
  stamp "step_profile $s rc=${PIPESTATUS[0]}"
done
for lag in 1 2; do
  timeout 80 python3 -m bench.scaling --nproc 1 --optimizers scao --steps 30 --warmup 10 \
    --scao-kwargs "{\"refresh_lag\": $lag}" --out "$OUT/lag$lag" > "$OUT/lag$lag.log" 2>&1
  stamp "scaling lag $lag rc=$?"
done
grep -E "^verification|^copy bandwidth|^\| " "$OUT/kernels.log" | head -30
for s in large small; do grep -A3 "^==" "$OUT/step_$s.log" | grep -v "^--"; done
for lag in 1 2; do grep "^| scao_dist" "$OUT/lag$lag/scaling.md"; done
