#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200), 2026-12-03 (twelfth session), the second: after session_wa, the check launched
# first in step() (the last step's check operands reused when the gradients are the same tensors; the last check read
# and refreshes swapped in while the GPU checks) and the codecs' division by their group scales done once per group
# (common.div_by_groups: Markstein's correction per value). Checks first: the division against div_rn over every
# fp32 mantissa x every bf16 scale mantissa (bench.kernels --only division,ema_signed_,rotated_adam_,adamw_, which
# also times those three kernels); then this tree against the session's start (ab_old/ = 8a1649e with this tree's
# bench/step_profile.py), alternating, twice each; capture_check on the 405M GPT with a NaN at step 16.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/session_wb}
W=/tmp/session_wb_work
mkdir -p "$OUT" "$W"
export TRITON_CACHE_DIR=$W/triton_cache
cp bench/step_profile.py ab_old/bench/step_profile.py
timeout 150 python3 -m bench.kernels --only division,ema_signed_,rotated_adam_,adamw_ --out "$OUT/kernels_new.json" \
  > "$W/kernels_new.log" 2>&1
echo "kernels new rc=$?"
grep -E "verif|division|ema_signed_|rotated_adam_|adamw_|copy" "$W/kernels_new.log" | cut -c1-200 | head -24
(cd ab_old && timeout 100 python3 -m bench.kernels --only ema_signed_,rotated_adam_,adamw_ --out "$OUT/kernels_old.json" \
  > "$W/kernels_old.log" 2>&1)
echo "kernels old rc=$?"
grep -E "verification|ema_signed_|rotated_adam_|adamw_|copy" "$W/kernels_old.log" | cut -c1-200 | head -16
profile() {
  case $1 in old*) D=ab_old;; *) D=.;; esac
  (cd "$D" && timeout 80 python3 -m bench.step_profile --size large --cases scao_norefresh,adamw --steps 30 \
    --profile-steps 3 --scao-kwargs '{"cuda_graph": true}' --out "$OUT/prof_$1.json" > "$W/prof_$1.log" 2>&1)
  echo "profile $1 rc=$?"
  grep -E "step\(\)|inside step|host split|_complement_update|_sumsq|_ema_signed" "$W/prof_$1.log" | cut -c1-330 | head -8
}
profile new
profile old
profile new2
profile old2
timeout 110 python3 -m bench.capture_check --size large --steps 20 --nan-at 16 --out "$OUT/capture_large.json" \
  > "$W/capture_large.log" 2>&1
echo "capture rc=$?"
python3 -c "import json; d=json.load(open('$OUT/capture_large.json')); print({k: d.get(k) for k in ('bit_exact','first_weight_mismatch_step','state_mismatch_counts','graph_counts','graph_groups','skipped_steps','steps_taken')})"
tar czf "$OUT/session_wb.tgz" -C "$W" --exclude triton_cache .
