#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200), 2026-12-03 (eleventh session), the last: after session_xb, less host time
# before the check (aliasing by identity, the check's views and key kept while the gradients are the same tensors).
# This tree against the session's start (ab_old/ = ca5bfc4, with this tree's bench/step_profile.py), alternating,
# twice each: the 405M step() captured, fused AdamW in each process; capture_check on the 405M GPT with a NaN
# gradient at step 16 (bit for bit against eager steps; zero_grad's kept gradients for the column-split weights).
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/session_xc}
W=/tmp/session_xc_work
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
profile new
profile old
profile new2
profile old2
timeout 110 python3 -m bench.capture_check --size large --steps 20 --nan-at 16 --out "$OUT/capture_large.json" \
  > "$W/capture_large.log" 2>&1
echo "capture rc=$?"
python3 -c "import json; d=json.load(open('$OUT/capture_large.json')); print({k: d.get(k) for k in ('bit_exact','first_weight_mismatch_step','state_mismatch_counts','graph_counts','graph_groups','skipped_steps','steps_taken')})"
tar czf "$OUT/session_xc.tgz" -C "$W" --exclude triton_cache .
