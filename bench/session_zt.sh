#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200): the low-rank kernels take the fp32 factor as bf16 pieces split by
# torch (session_zs split it in the kernel); the captured step's replays prepared while the GPU checks the
# gradients (GroupGraphs.plan). bench.kernels verifies the low-rank kernels against their twins and times them;
# the 405M step() without refreshes, captured, with fused AdamW in the same process; capture_check on the 405M
# GPT (bit for bit); the eager 405M step.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/session_zt}
W=/tmp/session_zt_work
mkdir -p "$OUT" "$W"
export TRITON_CACHE_DIR=$W/triton_cache
timeout 200 python3 -m bench.kernels --only complement_update,residual_stats,residual_sumsq \
  --out "$OUT/kernels.json" > "$OUT/kernels.log" 2>&1
echo "kernels rc=$?"; grep -E "verif|mismatch|GB/s" "$OUT/kernels.log" | head -12
python3 -c "import json; d=json.load(open('$OUT/kernels.json')); print(d['markdown'])" 2>/dev/null
timeout 110 python3 -m bench.step_profile --size large --cases scao_norefresh,adamw --steps 30 --profile-steps 5 \
  --scao-kwargs '{"cuda_graph": true}' --out "$OUT/prof_graph.json" > "$W/prof_graph.log" 2>&1
echo "profile rc=$?"; grep -E "step\(\)|GPU busy|inside step|ms .*x  " "$W/prof_graph.log" | cut -c1-200 | head -60
timeout 150 python3 -m bench.capture_check --size large --steps 24 --out "$OUT/capture_large.json" \
  > "$W/capture_large.log" 2>&1
echo "capture rc=$?"
python3 -c "import json; d=json.load(open('$OUT/capture_large.json')); print({k: d[k] for k in ('bit_exact','first_weight_mismatch_step','state_mismatch_counts','graph_counts','graph_failed_groups','step_ms_median')})"
timeout 90 python3 -m bench.step_profile --size large --cases scao_norefresh --steps 20 --profile-steps 3 \
  --out "$OUT/prof_eager.json" > "$W/prof_eager.log" 2>&1
echo "eager rc=$?"; grep -E "step\(\)|GPU busy|inside step" "$W/prof_eager.log" | cut -c1-200
tar czf "$OUT/session_zt.tgz" -C "$W" --exclude triton_cache .
