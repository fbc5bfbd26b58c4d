#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200), 2026-12-03 (eleventh session): the step's NaN/inf check fused with the copies
# of column-split weights' gradients into their group buffers (kernels.finite_gather, one pass instead of the
# foreach_norm check plus 16 strided copies at 405M); refreshes due worked out after the replays are launched; the
# low-rank kernels issue their tile loads before the products (lowrank: in flight while the tensor cores work). The
# session's start (ab_old/ = ca5bfc4, with this tree's bench/step_profile.py: gradients loaded into kept tensors, as
# the allocator does in training) against this tree, alternating, twice each: the 405M step() captured, fused AdamW
# in each process; the new kernel, the complement and the residual statistics against their twins and timed
# (bench.kernels), in both trees for the last two; capture_check on the 405M GPT with a NaN gradient at step 16 (bit
# for bit against eager steps, the column blocks now copied in by the check).
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/session_xa}
W=/tmp/session_xa_work
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
profile old
profile new
timeout 110 python3 -m bench.kernels --only finite_gather,complement_update,residual_stats --warmup 10 --rep 40 \
  --out "$OUT/kernels.json" > "$W/kernels.log" 2>&1
echo "kernels rc=$?"; grep -E "verif|mismatch|GB/s|copy bandwidth" "$W/kernels.log" | cut -c1-200 | head -24
timeout 110 python3 -m bench.capture_check --size large --steps 20 --nan-at 16 --out "$OUT/capture_large.json" \
  > "$W/capture_large.log" 2>&1
echo "capture rc=$?"; tail -2 "$W/capture_large.log" | cut -c1-300
python3 -c "import json; d=json.load(open('$OUT/capture_large.json')); print({k: d.get(k) for k in ('bit_exact','first_weight_mismatch_step','state_mismatch_counts','graph_counts','graph_groups','skipped_steps','steps_taken')})"
profile old2
profile new2
(cd ab_old && timeout 70 python3 -m bench.kernels --only complement_update,residual_stats --warmup 10 --rep 40 \
  --out "$OUT/kernels_old.json" > "$W/kernels_old.log" 2>&1)
echo "kernels old rc=$?"; grep -E "GB/s" "$W/kernels_old.log" | cut -c1-200 | head -16
tar czf "$OUT/session_xa.tgz" -C "$W" --exclude triton_cache .
