#!/usr/bin/env bash
# GPU call 1 of 2 for issue 5 after session 4's low-rank kernels (device tool, carry [".whl"]; about 5 minutes):
#   1. python -m bench.kernels: every kernel against its twin on the device, then achieved bandwidth
#      against this GPU's copy bandwidth (the low-rank kernels with their TF32 products);
#   2. python -m bench.step_profile on the 405M and 43M GPTs: step() alone, ms, vs fused AdamW in the same run;
#   3. bench.scaling at N=1 on the 405M GPT, refresh_lag 1 (default) and 2: does a second step of lag take the
#      refresh waits (and the p99 spikes of the 2-GPU run) off the step?
# Everything lands in $OUT/session_j.tgz; the summaries are printed last.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/session_j}
W=/tmp/session_j_work
mkdir -p "$OUT" "$W"
source bench/use_wheels.sh "DeepSpeed is not needed here"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
timeout 170 python3 -m bench.kernels --out "$W/kernels.json" --rep 100 > "$W/kernels.log" 2>&1
echo "bench.kernels rc=$?"
for s in large small; do
  timeout 150 python3 -m bench.step_profile --size "$s" --steps 20 --out "$W/step_$s.json" 2>&1 | grep -v USDT \
    > "$W/step_$s.log"
  echo "step_profile $s rc=$?"
done
for lag in 1 2; do
  timeout 100 python3 -m bench.scaling --nproc 1 --optimizers scao --steps 30 --warmup 10 \
    --scao-kwargs "{\"refresh_lag\": $lag}" --out "$W/lag$lag" > "$W/lag$lag.log" 2>&1
  echo "scaling lag $lag rc=$?"
done
tar czf "$OUT/session_j.tgz" -C "$W" .
grep -E "^verification|^copy bandwidth|^\| " "$W/kernels.log" | head -30
for s in large small; do grep -A3 "^==" "$W/step_$s.log" | grep -v "^--"; done
for lag in 1 2; do grep "^| scao_dist" "$W/lag$lag/scaling.md"; done
