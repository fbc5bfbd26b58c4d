#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200): residual_stats, one Triton kernel for what a group step derives from the row and
# column sums of squares of G (the EMAs of the gradient's and the residual's statistics, ||G||^2, the complement's
# column factor and floor: some twenty small torch launches before). Verifies the low-rank kernels against their twins,
# times residual_stats, then the 405M step without refreshes (bench.step_profile, case scao_norefresh) and the default
# 405M and 43M steps (bench.compare), the commit before (run from old/) and new alternating. Before the call:
# `mkdir old && git archive 1fb171d scao_dist bench | tar -x -C old`.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/session_ze}
W=/tmp/session_ze_work
mkdir -p "$OUT" "$W"
export TRITON_CACHE_DIR=$W/triton_cache
here=$PWD
timeout 150 python3 -m bench.kernels --only residual_stats,residual_sumsq,complement_update --match "bf16" --rep 40 \
  --out "$OUT/kernels.json" > "$OUT/kernels.log" 2>&1
echo "kernels rc=$?"
prof() {  # name, tree
  (cd "$2" && timeout 120 python3 -m bench.step_profile --size large --cases scao_norefresh --steps 20 \
    --profile-steps 5 --out "$W/$1.json" > "$W/$1.log" 2>&1; echo "profile $1 rc=$?")
}
for pass in a b; do
  prof "old$pass" "$here/old"
  prof "new$pass" "$here"
done
run() {  # name, tree, size, steps
  (cd "$2" && timeout 100 python3 -m bench.compare --size "$3" --optimizers scao --lrs scao=1e-3 --steps "$4" \
    --warmup 10 --eval-every "$4" --eval-batches 2 --timing-skip 10 --no-report \
    --out "$W/$1" > "$W/$1.log" 2>&1; echo "run $1 rc=$?")
}
run L_old "$here/old" large 40
run L_new "$here" large 40
run s_warm "$here" small 60
for pass in a b; do
  run "s_old$pass" "$here/old" small 200
  run "s_new$pass" "$here" small 200
done
tar czf "$OUT/session_ze.tgz" -C "$W" --exclude triton_cache .
grep -E "^\| |verification|mismatch" "$OUT/kernels.log" | head -30
for f in olda newa oldb newb; do echo "== $f"; grep -E "step\(\)|GPU busy|launches/step" "$W/$f.log" | head -3 | cut -c1-160; done
grep -H "^\[run 1/1\].*ok" "$W"/L_*.log "$W"/s_*.log | sed 's/.*work\///'
