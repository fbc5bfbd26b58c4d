#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200): the final code's residual_stats (its four statistic updates through one helper)
# verified against its twin and timed, and the 405M GPT's default run once (held-out loss, ms/step).
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/session_zg}
W=/tmp/session_zg_work
mkdir -p "$OUT" "$W"
export TRITON_CACHE_DIR=$W/triton_cache
timeout 100 python3 -m bench.kernels --only residual_stats --rep 40 --out "$OUT/kernels.json" > "$OUT/kernels.log" 2>&1
echo "kernels rc=$?"
timeout 100 python3 -m bench.compare --size large --optimizers scao --lrs scao=1e-3 --steps 40 --warmup 10 \
  --eval-every 40 --eval-batches 2 --timing-skip 10 --no-report --out "$W/L" > "$OUT/large.log" 2>&1
echo "large rc=$?"
grep -E "^\| |verification|mismatch" "$OUT/kernels.log" | head
grep -h "^\[run 1/1\].*ok" "$OUT/large.log"
