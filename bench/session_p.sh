#!/usr/bin/env bash
# Short GPU call (device tool, carry [".whl"]; about 2 minutes) after the rank-1 fix of the low-rank kernels:
#   1. bench.kernels --only complement_update,residual_sumsq: verification against the twins on the GPU;
#   2. (FREQ10=0 skips it) bench.scaling at N=1 on the 405M GPT with precond_freq 10 (the default is 5): how much of step() the
#      refresh waits take when the worker has twice as long per basis.
# Everything lands in $OUT/session_p.tgz; summaries last.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/session_p}
W=/tmp/session_p_work
mkdir -p "$OUT" "$W"
timeout 120 python3 -m bench.kernels --only complement_update,residual_sumsq --rep 40 --warmup 10 \
  --out "$W/kernels_lowrank.json" > "$W/kernels_lowrank.log" 2>&1
echo "kernels rc=$?"
if [[ "${FREQ10:-1}" == 1 ]]; then
  timeout 90 python3 -m bench.scaling --nproc 1 --optimizers scao --steps 30 --warmup 10 \
    --scao-kwargs '{"precond_freq": 10}' --out "$W/freq10" > "$W/freq10.log" 2>&1
  echo "scaling freq10 rc=$?"
fi
tar czf "$OUT/session_p.tgz" -C "$W" .
grep -E "^verification|^  verify|^   |^\| " "$W/kernels_lowrank.log" | head -20
cat "$W/freq10/scaling.md" 2>/dev/null | head -30
