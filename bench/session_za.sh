#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200), at the session's final code: the 43M GPT timed alone (AdamW, scao_dist),
# the 405M GPT's default step twice (precond_freq 5; eigensolves on 4 streams), and the 405M step profile with
# refreshes (where the refresh worker's device time goes now; the shape table filtered before its top 25).
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/session_za}
W=/tmp/session_za_work
mkdir -p "$OUT" "$W"
export TRITON_CACHE_DIR=$W/triton_cache
base=(--size small --steps 300 --eval-every 300 --eval-batches 4 --no-report)
for o in "adamw=5e-4" "scao=1e-3"; do
  timeout 90 python3 -m bench.compare --optimizers "${o%%=*}" --lrs "$o" "${base[@]}" --out "$W/t" \
    > "$W/t_${o%%=*}.log" 2>&1
  echo "small ${o%%=*} rc=$?"
done
for name in f5a f5b; do
  timeout 110 python3 -m bench.scaling --nproc 1 --optimizers scao --steps 40 --warmup 10 \
    --scao-kwargs '{"precond_freq": 5}' --out "$W/$name" > "$W/$name.log" 2>&1
  echo "run $name rc=$?"
done
timeout 200 python3 -m bench.step_profile --size large --cases scao,adamw --out "$OUT/step_large.json" \
  > "$OUT/step_large.log" 2>&1
echo "step_profile rc=$?"
tar czf "$OUT/session_za.tgz" -C "$W" --exclude triton_cache .
grep -h "^\[run" "$W"/t_*.log
for name in f5a f5b; do
  echo "== $name"
  grep "^| scao_dist" "$W/$name/scaling.md"
done
grep -E "^== |GPU busy|launches/step|sytrd|syevd|_kernel " "$OUT/step_large.log" | head -30
