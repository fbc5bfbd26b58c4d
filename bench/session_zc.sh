#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200): does the interpreter's thread switch interval hold the training loop back
# while the refresh worker runs Python? SCAO_SWITCH_INTERVAL (seconds; unset = Python's 5 ms) on the 405M GPT at
# precond_freq 5 (bench.compare --profile-phases 10, 40 timed steps) and the 43M GPT (300 steps), alternating.
# The knob was removed again (6df4857): run this from a checkout of b594d53.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/session_zc}
W=/tmp/session_zc_work
mkdir -p "$OUT" "$W"
export TRITON_CACHE_DIR=$W/triton_cache
large() {  # name, interval ("" = default)
  SCAO_SWITCH_INTERVAL=$2 timeout 100 python3 -m bench.compare --size large --optimizers scao --lrs scao=1e-3 \
    --steps 40 --warmup 10 --eval-every 40 --eval-batches 2 --timing-skip 10 --profile-phases 10 --no-report \
    --out "$W/$1" > "$W/$1.log" 2>&1
  echo "run $1 rc=$?"
}
small() {
  SCAO_SWITCH_INTERVAL=$2 timeout 90 python3 -m bench.compare --size small --optimizers scao --lrs scao=1e-3 \
    --steps 300 --eval-every 300 --eval-batches 4 --no-report --out "$W/$1" > "$W/$1.log" 2>&1
  echo "run $1 rc=$?"
}
for pass in a b; do
  large "d5$pass" ""
  large "d1$pass" 0.001
  large "d02$pass" 0.0002
done
small s_warm 0.005  # builds the small model's kernels into the cache
for pass in a b; do
  small "s5$pass" 0.005
  small "s02$pass" 0.0002
done
tar czf "$OUT/session_zc.tgz" -C "$W" --exclude triton_cache .
python3 -m bench.refresh_summary "$W" d5a d1a d02a d5b d1b d02b
grep -H "^\[run" "$W"/s*.log
