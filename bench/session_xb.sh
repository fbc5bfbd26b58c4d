#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200), 2026-12-03 (eleventh session), after session_xa: the residual sums' kernel back
# to its order (the product before the sums of G ran 1.33x slower there), the complement keeping its early loads;
# verify's device comparison fixed (session_xa's finite_gather "mismatches" were cuda vs cuda:0, the flags right);
# the check's segment table without a tile map, uploaded through pinned memory (session_xa: rebuilding it for a
# new set of gradient addresses took ~2 ms of host time); zero_grad keeps a gradient tensor for each column-split
# weight (the same addresses every step, so the check is replayed in training too).
# The check kernel and the residual statistics against their twins and timed (bench.kernels); this tree against the
# session's start (ab_old/ = ca5bfc4, with this tree's bench/step_profile.py), alternating, twice each: the 405M
# step() captured, fused AdamW in each process.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/session_xb}
W=/tmp/session_xb_work
mkdir -p "$OUT" "$W"
export TRITON_CACHE_DIR=$W/triton_cache
cp bench/step_profile.py ab_old/bench/step_profile.py
profile() {
  case $1 in old*) D=ab_old;; *) D=.;; esac
  (cd "$D" && timeout 70 python3 -m bench.step_profile --size large --cases scao_norefresh,adamw --steps 30 \
    --profile-steps 3 --scao-kwargs '{"cuda_graph": true}' --out "$OUT/prof_$1.json" > "$W/prof_$1.log" 2>&1)
  echo "profile $1 rc=$?"
  grep -E "step\(\)|inside step|_complement_update|_sumsq|_finite|foreach_norm|copy_ \[\[2048, 4096\]" "$W/prof_$1.log" \
    | cut -c1-170 | head -8
}
timeout 100 python3 -m bench.kernels --only finite_gather,residual_stats --warmup 10 --rep 40 \
  --out "$OUT/kernels.json" > "$W/kernels.log" 2>&1
echo "kernels rc=$?"; grep -E "verif|mismatch|GB/s|copy bandwidth|  finite" "$W/kernels.log" | cut -c1-200 | head -14
profile new
profile old
profile new2
profile old2
tar czf "$OUT/session_xb.tgz" -C "$W" --exclude triton_cache .
