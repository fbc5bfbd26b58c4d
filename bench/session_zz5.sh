#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200): the eighth session's closing measurements, the tree of this commit.
# residual_stats' 128x128 sum tiles against their twin (bench.kernels, the 405M step's case); the 405M step()
# without refreshes, captured, against fused AdamW in the same process, at max_precond_dim 4096 (the default: the
# fc_proj weights are cut into column blocks) and 8192 (each weight one block); capture_check on the 405M GPT with
# refreshes and a NaN gradient at step 16 (bit for bit against eager, the skip counted once); the 43M GPT, 300
# steps, AdamW / SCAO eager / SCAO captured (bench.compare).
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/session_zz5}
W=/tmp/session_zz5_work
mkdir -p "$OUT" "$W"
export TRITON_CACHE_DIR=$W/triton_cache
timeout 100 python3 -m bench.kernels --only residual_stats --match "144 bf16 G" --out "$OUT/kernels_rs.json" \
  > "$OUT/kernels_rs.log" 2>&1
echo "residual_stats rc=$?"; grep -E "verif|mismatch|GB/s" "$OUT/kernels_rs.log" | head -5
for P in 4096 8192; do
  timeout 110 python3 -m bench.step_profile --size large --cases scao_norefresh,adamw --steps 30 --profile-steps 5 \
    --scao-kwargs "{\"cuda_graph\": true, \"max_precond_dim\": $P}" --out "$OUT/prof_graph_$P.json" > "$W/prof_graph_$P.log" 2>&1
  echo "profile $P rc=$?"; grep -E "step\(\)|GPU busy|inside step" "$W/prof_graph_$P.log" | cut -c1-200 | head -6
done
timeout 150 python3 -m bench.capture_check --size large --steps 24 --nan-at 16 --out "$OUT/capture_large.json" \
  > "$W/capture_large.log" 2>&1
echo "capture rc=$?"
python3 -c "import json; d=json.load(open('$OUT/capture_large.json')); print({k: d[k] for k in ('bit_exact','first_weight_mismatch_step','state_mismatch_counts','graph_counts','graph_failed_groups','check_captured','skipped_steps','steps_taken','step_ms_median')})"
G='graph={"cuda_graph": true}'
timeout 170 python3 -m bench.compare --size small --optimizers adamw,scao,graph --scao-variant "$G" \
  --lrs "adamw=5e-4;scao=1e-3;graph=1e-3" --steps 300 --eval-every 300 --eval-batches 4 --no-report \
  --out "$W/small" > "$W/small.log" 2>&1; echo "small rc=$?"
grep -h "^\[run" "$W/small.log"
tar czf "$OUT/session_zz5.tgz" -C "$W" --exclude triton_cache .
