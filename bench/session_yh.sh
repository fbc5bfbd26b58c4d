#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200), 2026-12-03 (tenth session): (1) the complement's denominator as a product of
# per-row and per-column reciprocals (no division per element, reference.complement_reciprocals) and (2) floors on
# the second moments of a stream basis (reference.RES_FLOOR for the complement, ROT_FLOOR for the rotated core,
# groups.KronGroup._rot_floor). The kernels against their twins (bench.kernels: complement_update, rotated_adam_);
# the session's start (ab_old/, `git archive ac939f5 scao_dist bench | tar x -C ab_old`) against this tree, in one
# call: the 405M step() without refreshes, captured, fused AdamW in each process, twice each; the 43M GPT, 1500
# steps, captured, seed 0, at the floors of the start (1e-3, none) and at FLOORS (RES ROT), this tree.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/session_yh}
W=/tmp/session_yh_work
mkdir -p "$OUT" "$W"
export TRITON_CACHE_DIR=$W/triton_cache
FLOORS=${FLOORS:-"3e-2 3e-2"}
timeout 150 python3 -m bench.kernels --only complement_update,rotated_adam_ --out "$OUT/kernels.json" \
  > "$W/kernels.log" 2>&1
echo "kernels rc=$?"; grep -E "verification|mismatch|complement_update|rotated_adam_" "$W/kernels.log" | cut -c1-200 | head -12
for T in old new old2 new2; do
  case $T in old*) D=ab_old;; *) D=.;; esac
  (cd "$D" && timeout 100 python3 -m bench.step_profile --size large --cases scao_norefresh,adamw --steps 30 \
    --profile-steps 3 --scao-kwargs '{"cuda_graph": true}' --out "$OUT/prof_$T.json" > "$W/prof_$T.log" 2>&1)
  echo "profile $T rc=$?"; grep -E "step\(\)|inside step|_complement" "$W/prof_$T.log" | cut -c1-140 | head -6
done
for F in "1e-3 0" "$FLOORS"; do
  set -- $F
  timeout 150 python3 - "$1" "$2" "$W/small_$1_$2" > "$W/small_$1_$2.log" 2>&1 <<'PY'
import runpy, sys
from scao_dist.kernels import reference
reference.RES_FLOOR, reference.ROT_FLOOR = float(sys.argv[1]), float(sys.argv[2])
out = sys.argv[3]
sys.argv = ["compare", "--size", "small", "--optimizers", "graph", "--scao-variant", 'graph={"cuda_graph": true}',
            "--lrs", "graph=1e-3", "--steps", "1500", "--eval-every", "500", "--eval-batches", "8", "--no-report",
            "--out", out]
runpy.run_module("bench.compare", run_name="__main__")
PY
  echo "small floors $1 $2 rc=$?"; grep -h "^\[run.*ok\|eval\|val" "$W/small_$1_$2.log" | tail -3
done
tar czf "$OUT/session_yh.tgz" -C "$W" --exclude triton_cache .
