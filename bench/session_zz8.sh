#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200): as session_zz6 at the session's end (4fddb9f): its start (7c04ec8, in ab_old/ by
# `git archive 7c04ec8 scao_dist bench | tar x -C ab_old`) against its end (this tree), in one call on one
# host: the 405M step() without refreshes, captured, with fused AdamW in each process; the 43M GPT, 300 steps,
# AdamW and SCAO captured (bench.compare), each tree in turn.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/session_zz8}
W=/tmp/session_zz8_work
mkdir -p "$OUT" "$W"
export TRITON_CACHE_DIR=$W/triton_cache
G='graph={"cuda_graph": true}'
for T in old new; do
  if [ "$T" = old ]; then D=ab_old; else D=.; fi
  (cd "$D" && timeout 100 python3 -m bench.step_profile --size large --cases scao_norefresh,adamw --steps 30 \
    --profile-steps 3 --scao-kwargs '{"cuda_graph": true}' --out "$OUT/prof_$T.json" > "$W/prof_$T.log" 2>&1)
  echo "profile $T rc=$?"; grep -E "step\(\)|inside step" "$W/prof_$T.log" | cut -c1-160 | head -4
  (cd "$D" && timeout 120 python3 -m bench.compare --size small --optimizers adamw,graph --scao-variant "$G" \
    --lrs "adamw=5e-4;graph=1e-3" --steps 300 --eval-every 300 --eval-batches 4 --no-report \
    --out "$W/small_$T" > "$W/small_$T.log" 2>&1); echo "small $T rc=$?"
  grep -h "^\[run.*ok" "$W/small_$T.log"
done
tar czf "$OUT/session_zz8.tgz" -C "$W" --exclude triton_cache .
