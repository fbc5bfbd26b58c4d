#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200), right after session_zp on the same machine: the 405M GPT trained 40 steps
# (default precond_freq) with fused AdamW and with captured scao_dist, for ms/step and peak memory.
set -uo pipefail
OUT=${OUT:-/tmp/session_zp2}
mkdir -p "$OUT"
G='graph={"cuda_graph": true}'
timeout 200 python3 -m bench.compare --size large --optimizers adamw,graph --scao-variant "$G" \
  --lrs "adamw=3e-4;graph=1e-3" --steps 40 --warmup 10 --eval-every 40 --eval-batches 2 --timing-skip 10 \
  --no-report --out "$OUT/large" > "$OUT/large.log" 2>&1
echo rc=$?
grep -h "^\[run" "$OUT/large.log"
