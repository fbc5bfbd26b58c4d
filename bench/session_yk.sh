#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200), 2026-12-03 (tenth session), the last of the session: the complement's
# reciprocal roots back in vectors, formed by one small kernel per group (lowrank._complement_prep_kernel) instead of
# per tile (session_yj: +0.15 ms) or by a dozen torch launches (session_yh); the gate's writes of the stream sketches
# in place (one torch.where with out=). The low-rank kernels against their twins; the session's start (ab_old/ =
# ac939f5) against this tree, alternating, twice each: the 405M step() captured (fused AdamW in each process). Cut to
# fit the device time left (capture_check of the gated replays ran in session_yj).
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/session_yk}
W=/tmp/session_yk_work
mkdir -p "$OUT" "$W"
export TRITON_CACHE_DIR=$W/triton_cache
timeout 100 python3 -m bench.kernels --only complement_update --warmup 10 --rep 50 \
  --out "$OUT/kernels.json" > "$W/kernels.log" 2>&1
echo "kernels rc=$?"; grep -E "verification|mismatch|verify|complement_update" "$W/kernels.log" | cut -c1-160 | head -12
for T in old new old2 new2; do
  case $T in old*) D=ab_old;; *) D=.;; esac
  (cd "$D" && timeout 60 python3 -m bench.step_profile --size large --cases scao_norefresh,adamw --steps 30 \
    --profile-steps 3 --scao-kwargs '{"cuda_graph": true}' --out "$OUT/prof_$T.json" > "$W/prof_$T.log" 2>&1)
  echo "profile $T rc=$?"; grep -E "step\(\)|inside step|_complement" "$W/prof_$T.log" | cut -c1-140 | head -6
done
tar czf "$OUT/session_yk.tgz" -C "$W" --exclude triton_cache .
