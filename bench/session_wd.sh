#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200), 2026-12-03 (twelfth session), after session_wc: the final tree (the memos of
# gradients and state hold weak references, 7ef662f) against the session's start (ab_old/ = 8a1649e with this tree's
# bench/step_profile.py), alternating, three times each, 60 timed steps per process; capture_check on the 405M GPT
# with a NaN at step 16.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/session_wd}
W=/tmp/session_wd_work
mkdir -p "$OUT" "$W"
export TRITON_CACHE_DIR=$W/triton_cache
cp bench/step_profile.py ab_old/bench/step_profile.py
profile() {
  case $1 in old*) D=ab_old;; *) D=.;; esac
  (cd "$D" && timeout 80 python3 -m bench.step_profile --size large --cases scao_norefresh,adamw --steps 60 \
    --profile-steps 3 --scao-kwargs '{"cuda_graph": true}' --out "$OUT/prof_$1.json" > "$W/prof_$1.log" 2>&1)
  echo "profile $1 rc=$?"
  grep -E "step\(\)|inside step|host split|_complement_update|_sumsq|_ema_signed" "$W/prof_$1.log" | cut -c1-330 | head -8
}
profile new
profile old
profile new2
profile old2
profile new3
profile old3
timeout 110 python3 -m bench.capture_check --size large --steps 20 --nan-at 16 --out "$OUT/capture_large.json" \
  > "$W/capture_large.log" 2>&1
echo "capture rc=$?"
python3 -c "import json; d=json.load(open('$OUT/capture_large.json')); print({k: d.get(k) for k in ('bit_exact','first_weight_mismatch_step','state_mismatch_counts','graph_counts','graph_groups','skipped_steps','steps_taken')})"
tar czf "$OUT/session_wd.tgz" -C "$W" --exclude triton_cache .
