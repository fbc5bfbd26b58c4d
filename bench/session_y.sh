#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200): the Nystrom Grams diagonalised over 4 streams (precond.GRAM_EIGH_STREAMS,
# the new default) against one after the other (SCAO_GRAM_EIGH_STREAMS=1), 405M GPT, precond_freq 5, in one call
# (4, 1, 4, 1: the host's speed drifts between runs), after `python -m bench.eigh_probe`.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/session_y}
W=/tmp/session_y_work
mkdir -p "$OUT" "$W"
export TRITON_CACHE_DIR=$W/triton_cache
timeout 60 python3 -m bench.eigh_probe --out "$OUT/eigh_probe.json" > "$OUT/eigh_probe.log" 2>&1
run() {  # name, streams
  SCAO_GRAM_EIGH_STREAMS=$2 timeout 110 python3 -m bench.scaling --nproc 1 --optimizers scao --steps 40 --warmup 10 \
    --scao-kwargs '{"precond_freq": 5}' --out "$W/$1" > "$W/$1.log" 2>&1
  echo "run $1 rc=$?"
}
run s4a 4
run s1a 1
run s4b 4
run s1b 1
tar czf "$OUT/session_y.tgz" -C "$W" --exclude triton_cache .
grep -v float32 "$OUT/eigh_probe.log" | head -12
for name in s4a s1a s4b s1b; do
  echo "== $name"
  grep "^| scao_dist" "$W/$name/scaling.md"
  python3 -m bench.slow_steps "$W/$name/scao_n1.json" | head -8
done
