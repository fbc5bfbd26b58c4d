#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200), 2026-12-03 (tenth session): the replays gated on the device (every state
# write of a group step reads the gate in its scalars row, capture.GroupGraphs.arm), so on one rank the host launches
# them without waiting for the non-finite check; the complement's reciprocals formed per tile; the second-moment
# floors; the complement's left factors Q_L C as bf16 products (KronGroup.bf16_left_products). Every kernel against
# its twin (bench.kernels: gate-shut cases included); capture_check on the 405M GPT with a NaN gradient at step 16
# (bit for bit against eager steps; the NaN step's replays now run behind a shut gate); the session's start
# (ab_old/ = ac939f5) against this tree in one call: the 405M step() captured, fused AdamW in each process, twice
# each, and this tree once with bf16_left_products off; the 43M GPT, 300 steps, AdamW and SCAO captured
# (bench.compare), each tree; this tree's SCAO on the 43M GPT for 1500 steps (quality; session_yh's start: 0.8129).
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/session_yj}
W=/tmp/session_yj_work
mkdir -p "$OUT" "$W"
export TRITON_CACHE_DIR=$W/triton_cache
G='graph={"cuda_graph": true}'
timeout 130 python3 -m bench.kernels --warmup 10 --rep 50 --out "$OUT/kernels.json" > "$W/kernels.log" 2>&1
echo "kernels rc=$?"; grep -E "verification|mismatch|verify" "$W/kernels.log" | cut -c1-160 | head -12
timeout 100 python3 -m bench.capture_check --size large --steps 24 --nan-at 16 --out "$OUT/capture_large.json" \
  > "$W/capture_large.log" 2>&1
echo "capture rc=$?"
python3 -c "import json; d=json.load(open('$OUT/capture_large.json')); print({k: d.get(k) for k in ('bit_exact','first_weight_mismatch_step','state_mismatch_counts','graph_counts','graph_gated_groups','skipped_steps','steps_taken')})"
for T in old new tf32 old2 new2; do
  case $T in old*) D=ab_old;; *) D=.;; esac
  (cd "$D" && timeout 60 python3 - "$T" "$OUT" > "$W/prof_$T.log" 2>&1 <<'PY'
import runpy, sys
which, out = sys.argv[1], sys.argv[2]
if which == "tf32":
    from scao_dist.groups import KronGroup
    KronGroup.bf16_left_products = False
sys.argv = ["step_profile", "--size", "large", "--cases", "scao_norefresh,adamw", "--steps", "30", "--profile-steps", "3",
            "--scao-kwargs", '{"cuda_graph": true}', "--out", f"{out}/prof_{which}.json"]
runpy.run_module("bench.step_profile", run_name="__main__")
PY
  )
  echo "profile $T rc=$?"; grep -E "step\(\)|inside step|_complement" "$W/prof_$T.log" | cut -c1-140 | head -6
done
for T in old new; do
  case $T in old*) D=ab_old;; *) D=.;; esac
  (cd "$D" && timeout 60 python3 -m bench.compare --size small --optimizers adamw,graph --scao-variant "$G" \
    --lrs "adamw=5e-4;graph=1e-3" --steps 300 --eval-every 300 --eval-batches 4 --no-report \
    --out "$W/small_$T" > "$W/small_$T.log" 2>&1); echo "small $T rc=$?"
  grep -h "^\[run.*ok" "$W/small_$T.log"
done
timeout 100 python3 -m bench.compare --size small --optimizers graph --scao-variant "$G" --lrs "graph=1e-3" \
  --steps 1500 --eval-every 500 --eval-batches 8 --no-report --out "$W/small1500" > "$W/small1500.log" 2>&1
echo "small 1500 rc=$?"; grep -h "^\[run.*ok" "$W/small1500.log"
tar czf "$OUT/session_yj.tgz" -C "$W" --exclude triton_cache .
