#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200), 2026-12-03: the column blocks' gradients copied into their buffers first,
# right behind the non-finite check (capture.GroupGraphs.launch), where the GPU idled while the host computed the
# first key. The session's start (1c7dd74, in ab_old/ by `git archive 1c7dd74 scao_dist bench | tar x -C ab_old`)
# against this tree in one call: the 405M step() without refreshes, captured, fused AdamW in each process, twice
# each (old, new, old, new); capture_check on the 405M GPT with a NaN gradient at step 16 (bit for bit).
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/session_yc}
W=/tmp/session_yc_work
mkdir -p "$OUT" "$W"
export TRITON_CACHE_DIR=$W/triton_cache
for T in old new old2 new2; do
  case $T in old*) D=ab_old;; *) D=.;; esac
  (cd "$D" && timeout 100 python3 -m bench.step_profile --size large --cases scao_norefresh,adamw --steps 30 \
    --profile-steps 3 --scao-kwargs '{"cuda_graph": true}' --out "$OUT/prof_$T.json" > "$W/prof_$T.log" 2>&1)
  echo "profile $T rc=$?"; grep -E "step\(\)|inside step|GPU busy" "$W/prof_$T.log" | cut -c1-160 | head -5
done
timeout 150 python3 -m bench.capture_check --size large --steps 24 --nan-at 16 --out "$OUT/capture_large.json" \
  > "$W/capture_large.log" 2>&1
echo "capture rc=$?"
python3 -c "import json; d=json.load(open('$OUT/capture_large.json')); print({k: d.get(k) for k in ('bit_exact','first_weight_mismatch_step','state_mismatch_counts','graph_counts','graph_failed_groups','skipped_steps','steps_taken','step_ms_median')})"
tar czf "$OUT/session_yc.tgz" -C "$W" --exclude triton_cache .
