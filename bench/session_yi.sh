#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200), 2026-12-03 (tenth session): the complement kernel forms the reciprocal roots of
# its denominator per tile (no torch launches for them; session_yh's version spent the kernel's 0.15 ms gain on ~80
# small launches), the rotated floor read per block. Kernels against their twins; the 405M step() captured at the
# session's start (ab_old/ = ac939f5) and in this tree, and once with the host not waiting for the non-finite
# check before the replays (FiniteCheck.ok patched to True: an upper bound of what gating the replays on the device
# would save; unsafe, measurement only); capture_check on the 405M GPT with a NaN gradient at step 16.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/session_yi}
W=/tmp/session_yi_work
mkdir -p "$OUT" "$W"
export TRITON_CACHE_DIR=$W/triton_cache
timeout 150 python3 -m bench.kernels --only complement_update,rotated_adam_ --out "$OUT/kernels.json" \
  > "$W/kernels.log" 2>&1
echo "kernels rc=$?"; grep -E "verification|mismatch|complement_update|rotated_adam_" "$W/kernels.log" | cut -c1-200 | head -12
for T in old new new2 nowait; do
  case $T in old*) D=ab_old;; *) D=.;; esac
  (cd "$D" && timeout 100 python3 - "$T" "$OUT" > "$W/prof_$T.log" 2>&1 <<'PY'
import runpy, sys
which, out = sys.argv[1], sys.argv[2]
if which == "nowait":
    from scao_dist.shard import comm
    comm.FiniteCheck.ok = lambda self: True
sys.argv = ["step_profile", "--size", "large", "--cases", "scao_norefresh,adamw", "--steps", "30", "--profile-steps", "3",
            "--scao-kwargs", '{"cuda_graph": true}', "--out", f"{out}/prof_{which}.json"]
runpy.run_module("bench.step_profile", run_name="__main__")
PY
  )
  echo "profile $T rc=$?"; grep -E "step\(\)|inside step|_complement" "$W/prof_$T.log" | cut -c1-140 | head -6
done
timeout 150 python3 -m bench.capture_check --size large --steps 24 --nan-at 16 --out "$OUT/capture_large.json" \
  > "$W/capture_large.log" 2>&1
echo "capture rc=$?"
python3 -c "import json; d=json.load(open('$OUT/capture_large.json')); print({k: d.get(k) for k in ('bit_exact','first_weight_mismatch_step','state_mismatch_counts','graph_counts','skipped_steps','steps_taken')})"
tar czf "$OUT/session_yi.tgz" -C "$W" --exclude triton_cache .
