#!/usr/bin/env bash
# GPU call for the next session (device tool, carry [".whl"]; about 5 minutes), two questions about the 405M step
# (BENCHMARKS.md §0), each answered by runs of `bench.scaling --nproc 1` in one call on one machine:
#   1. Is the one 250-350 ms step of every run Triton compiling a kernel variant first needed mid-run? The
#      precond_freq 10 run twice: the second process finds every kernel in Triton's on-disk cache (cuBLAS and
#      cuSOLVER keep nothing across processes). Gone in run 2: compiles; still there: something else. Each run
#      also logs the kernel variants Triton builds and the step they were first needed in (bench.scaling).
#   2. At the default precond_freq 5 the step waits for the refresh worker, whose largest GPU cost is the float64
#      eigh of the Nystrom Grams (cuSOLVER runs the batch one matrix after another): does diagonalising them on
#      the host instead (SCAO_HOST_EIGH_MAX=1024; it lost at 43M on an H100 in session 2) take the waits off?
#      precond_freq 5 with and without it, after the runs above (warm cache); and precond_freq 5 with
#      refresh_wait=False (the step never waits; refresh intervals stretch instead).
# Everything lands in $OUT/session_q.tgz; the summary rows and each run's slowest steps are printed last.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/session_q}
W=/tmp/session_q_work
mkdir -p "$OUT" "$W"
export TRITON_CACHE_DIR=$W/triton_cache  # starts empty: run f10a compiles, the others read
run() {  # name, precond_freq, extra environment (VAR=value or ""), extra SCAO kwargs (JSON members or "")
  env ${3:+"$3"} timeout 120 python3 -m bench.scaling --nproc 1 --optimizers scao --steps 40 --warmup 10 \
    --scao-kwargs "{\"precond_freq\": $2${4:+, $4}}" --out "$W/$1" > "$W/$1.log" 2>&1
  echo "run $1 rc=$?"
}
run f10a 10 ""
run f10b 10 ""
run f5 5 ""
run f5host 5 SCAO_HOST_EIGH_MAX=1024
run f5nowait 5 "" '"refresh_wait": false'
tar czf "$OUT/session_q.tgz" -C "$W" --exclude triton_cache .
for name in f10a f10b f5 f5host f5nowait; do
  echo "== $name"
  grep "^| scao_dist" "$W/$name/scaling.md"
  python3 - "$W/$name/scao_n1.json" <<'PYEOF'
import json, sys
r = json.load(open(sys.argv[1]))["ranks"][0]
for key in ("warmup_step_ms", "step_ms"):
    ms = r[key]
    top = sorted(range(len(ms)), key=lambda i: -ms[i])[:3]
    print(f"  {key}: slowest (index, ms) {[(i, round(ms[i], 1)) for i in top]}")
c = r.get("counters") or {}
print("  counters:", {k: c.get(k, 0) for k in ("refreshes", "refresh_waits", "refresh_late", "refreshes_deferred")})
tv = r.get("triton_variants")
if tv is not None:  # [step, kernel, ms]; steps count the warm-up steps first
    late = [e for e in tv if e[0] >= 2]
    print(f"  Triton variants built: {len(tv)}, from step 2 on: {late[:12]}")
PYEOF
done
