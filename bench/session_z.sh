#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200): the Nystrom refresh without its two host syncs (sketch norm, Cholesky
# tries) against `e190d1c` (eigensolves on 4 streams, syncs kept), 405M GPT, precond_freq 5, alternating in one
# call; then the 43M GPT timed alone (AdamW, scao_dist) at the new code. Before the call:
# `mkdir old && git archive e190d1c scao_dist bench | tar -x -C old` (skipped when old/ is missing).
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/session_z}
W=/tmp/session_z_work
mkdir -p "$OUT" "$W"
export TRITON_CACHE_DIR=$W/triton_cache
here=$PWD
run() {  # name, tree
  (cd "$2" && timeout 110 python3 -m bench.scaling --nproc 1 --optimizers scao --steps 40 --warmup 10 \
    --scao-kwargs '{"precond_freq": 5}' --out "$W/$1" > "$W/$1.log" 2>&1; echo "run $1 rc=$?")
}
for pass in a b; do
  run "new$pass" "$here"
  [ -d old/scao_dist ] && run "old$pass" "$here/old"
done
base=(--size small --steps 300 --eval-every 300 --eval-batches 4 --no-report)
for o in "adamw=5e-4" "scao=1e-3"; do
  timeout 90 python3 -m bench.compare --optimizers "${o%%=*}" --lrs "$o" "${base[@]}" --out "$W/t" \
    > "$W/t_${o%%=*}.log" 2>&1
  echo "small ${o%%=*} rc=$?"
done
tar czf "$OUT/session_z.tgz" -C "$W" --exclude triton_cache .
for name in newa olda newb oldb; do
  [ -f "$W/$name/scaling.md" ] || continue
  echo "== $name"
  grep "^| scao_dist" "$W/$name/scaling.md"
  python3 -m bench.slow_steps "$W/$name/scao_n1.json" | sed -n 3,4p
done
grep -h "^\[run" "$W"/t_*.log
