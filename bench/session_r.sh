#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200, no carry needed; about 7 minutes) after `dd0bb15` (one Triton variant of the
# moment kernels for every basis width). Three questions:
#   1. Is the 405M run's one slow step gone in a process that starts with an EMPTY Triton cache? (session_q: it was
#      a _rotated_adam_kernel variant built at a refresh, 320-355 ms; with a warm cache p99 fell from 400 to 72 ms.)
#      precond_freq 10 first (fresh cache), then the default precond_freq 5 and refresh_wait=False.
#   2. Do the group kernels still pass on the GPU and keep their bandwidth (all widths now take the n = nq*NMUL
#      path)? bench.kernels --only for the five kernels touched or in question; it adds an n % 32 == 16 case and
#      the low-rank kernels at k = 16, to tell the products' share of their time from the memory traffic's.
#   3. How busy is the GPU during a 405M step()? bench.step_profile's new device timeline (busy vs span, gaps).
# Everything lands in $OUT; the summary is printed last.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/session_r}
W=/tmp/session_r_work
mkdir -p "$OUT" "$W"
export TRITON_CACHE_DIR=$W/triton_cache  # starts empty
run() {  # name, precond_freq, extra SCAO kwargs (JSON members or "")
  timeout 100 python3 -m bench.scaling --nproc 1 --optimizers scao --steps 40 --warmup 10 \
    --scao-kwargs "{\"precond_freq\": $2${3:+, $3}}" --out "$W/$1" > "$W/$1.log" 2>&1
  echo "run $1 rc=$?"
}
run f10 10 ""
run f5 5 ""
run f5nowait 5 '"refresh_wait": false'
timeout 200 python3 -m bench.kernels --only ema_signed_,rotated_adam_,adamw_,residual_sumsq,complement_update \
  --rep 100 --out "$OUT/kernels.json" > "$OUT/kernels.log" 2>&1
echo "kernels rc=$?"
timeout 180 python3 -m bench.step_profile --size large --out "$OUT/step_large.json" > "$OUT/step_large.log" 2>&1
echo "step_profile rc=$?"
tar czf "$OUT/session_r.tgz" -C "$W" --exclude triton_cache .
for name in f10 f5 f5nowait; do
  echo "== $name"
  grep "^| scao_dist" "$W/$name/scaling.md"
  python3 -m bench.slow_steps "$W/$name/scao_n1.json"
done
grep -A40 "^| kernel" "$OUT/kernels.log" | head -30
grep -E "verif|FAIL|mismatch" "$OUT/kernels.log" | tail -5
grep -E "^== |GPU busy|launches/step" "$OUT/step_large.log"
