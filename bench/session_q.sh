#!/usr/bin/env bash
# GPU call for the next session (device tool, carry [".whl"]; about 3 minutes): is the one 250-350 ms step of
# every 405M run (BENCHMARKS.md §0) Triton compiling a kernel variant first needed mid-run? The same scaling
# run twice in a row on one machine: the second process finds every kernel in Triton's on-disk cache (cuBLAS and
# cuSOLVER keep nothing across processes). The stall gone in run 2 means compiles; still there means something
# else (allocator, solver workspaces). precond_freq 10, where the refresh waits do not blur the picture.
# Everything lands in $OUT/session_q.tgz; the two summary rows and each run's slowest steps are printed last.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/session_q}
W=/tmp/session_q_work
mkdir -p "$OUT" "$W"
export TRITON_CACHE_DIR=$W/triton_cache  # starts empty: run 1 compiles, run 2 reads
for run in 1 2; do
  timeout 120 python3 -m bench.scaling --nproc 1 --optimizers scao --steps 40 --warmup 10 \
    --scao-kwargs '{"precond_freq": 10}' --out "$W/run$run" > "$W/run$run.log" 2>&1
  echo "run $run rc=$?"
done
tar czf "$OUT/session_q.tgz" -C "$W" --exclude triton_cache .
for run in 1 2; do
  grep "^| scao_dist" "$W/run$run/scaling.md"
  python3 - "$W/run$run/scao_n1.json" <<'PYEOF'
import json, sys
r = json.load(open(sys.argv[1]))["ranks"][0]
for name in ("warmup_step_ms", "step_ms"):
    ms = r[name]
    top = sorted(range(len(ms)), key=lambda i: -ms[i])[:3]
    print(f"  {name}: slowest {[(i, ms[i]) for i in top]}")
PYEOF
done
