#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200): residual_stats spread over (block, chunk) programs plus a finishing kernel
# (session_ze ran one program per block: 0.9 ms more GPU time per 405M step). Verifies and times it, then the 405M step
# without refreshes against the code before residual_stats (`1fb171d`, run from old/), alternating, and the 43M GPT
# timed alone at the final code (AdamW, scao_dist; the README's table). Before the call:
# `mkdir old && git archive 1fb171d scao_dist bench | tar -x -C old`.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/session_zf}
W=/tmp/session_zf_work
mkdir -p "$OUT" "$W"
export TRITON_CACHE_DIR=$W/triton_cache
here=$PWD
timeout 120 python3 -m bench.kernels --only residual_stats,residual_sumsq --match "bf16" --rep 40 \
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
base=(--size small --steps 300 --eval-every 300 --eval-batches 4 --no-report)
for o in "adamw=5e-4" "scao=1e-3"; do
  timeout 90 python3 -m bench.compare --optimizers "${o%%=*}" --lrs "$o" "${base[@]}" --out "$W/t" \
    > "$W/t_${o%%=*}.log" 2>&1
  echo "small ${o%%=*} rc=$?"
done
tar czf "$OUT/session_zf.tgz" -C "$W" --exclude triton_cache .
grep -E "^\| |verification|mismatch" "$OUT/kernels.log" | head -20
for f in olda newa oldb newb; do echo "== $f"; grep -E "step\(\)|GPU busy|launches/step" "$W/$f.log" | head -3 | cut -c1-160; done
grep -h "^\[run" "$W"/t_*.log
