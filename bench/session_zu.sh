#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200): back to session_zs's in-register split of the fp32 core (session_zt's
# torch-formed pieces were slower), the gradient's projection in residual_stats on the fp32 bases again, and the
# captured step's scalars uploaded through pinned buffers while the GPU checks the gradients (GroupGraphs.plan).
# bench.kernels verifies the low-rank kernels and times them; the 405M step() without refreshes, captured, with
# fused AdamW in the same process; the same with max_precond_dim 8192 (the fc_proj weights then one block each,
# not two column blocks whose weights and gradients are copied every step); capture_check on the 405M GPT.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/session_zu}
W=/tmp/session_zu_work
mkdir -p "$OUT" "$W"
export TRITON_CACHE_DIR=$W/triton_cache
timeout 150 python3 -m bench.kernels --only complement_update,residual_stats --out "$OUT/kernels.json" \
  > "$OUT/kernels.log" 2>&1
echo "kernels rc=$?"; grep -E "verif|mismatch" "$OUT/kernels.log" | head -6
python3 -c "import json; d=json.load(open('$OUT/kernels.json')); print(d['markdown'])" 2>/dev/null
timeout 110 python3 -m bench.step_profile --size large --cases scao_norefresh,adamw --steps 30 --profile-steps 5 \
  --scao-kwargs '{"cuda_graph": true}' --out "$OUT/prof_graph.json" > "$W/prof_graph.log" 2>&1
echo "profile rc=$?"; grep -E "step\(\)|GPU busy|inside step|ms .*x  " "$W/prof_graph.log" | cut -c1-220 | head -42
timeout 100 python3 -m bench.step_profile --size large --cases scao_norefresh --steps 30 --profile-steps 5 \
  --scao-kwargs '{"cuda_graph": true, "max_precond_dim": 8192}' --out "$OUT/prof_graph_8192.json" \
  > "$W/prof_graph_8192.log" 2>&1
echo "profile 8192 rc=$?"; grep -E "step\(\)|GPU busy|inside step" "$W/prof_graph_8192.log" | cut -c1-220
timeout 150 python3 -m bench.capture_check --size large --steps 24 --out "$OUT/capture_large.json" \
  > "$W/capture_large.log" 2>&1
echo "capture rc=$?"
python3 -c "import json; d=json.load(open('$OUT/capture_large.json')); print({k: d[k] for k in ('bit_exact','first_weight_mismatch_step','state_mismatch_counts','graph_counts','graph_failed_groups','step_ms_median')})"
tar czf "$OUT/session_zu.tgz" -C "$W" --exclude triton_cache .
