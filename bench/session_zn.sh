#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200): the low-rank kernels without per-element masks (rank padded to BK = 16,
# rows clamped, whole tiles unmasked), 8 warps for the complement, the bits' division by a power of two as a
# product. bench.kernels verifies them (and apply/adamw, which share the bits' code) against their twins and times
# them; bench.complement_probe times the new kernel against session_zm's; the 405M step() without refreshes
# captured, with fused AdamW in the same process; capture_check on the 43M (bit for bit); then a launch-setting
# sweep of the two low-rank kernels at rank 144 with the time that is left.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/session_zn}
W=/tmp/session_zn_work
mkdir -p "$OUT" "$W"
export TRITON_CACHE_DIR=$W/triton_cache
T0=$(date +%s)
timeout 170 python3 -m bench.kernels --only complement_update,residual_sumsq,residual_stats,apply_update_,adamw_ \
  --out "$OUT/kernels.json" > "$OUT/kernels.log" 2>&1
echo "kernels rc=$?"; grep -E "verification|GB/s" "$OUT/kernels.log" | head -30
timeout 120 python3 -m bench.complement_probe --out "$W/probe.json" > "$W/probe.log" 2>&1
echo "probe rc=$?"; grep -E "==|library|copy of|no products  " "$W/probe.log"
timeout 130 python3 -m bench.step_profile --size large --cases scao_norefresh,adamw --steps 20 --profile-steps 5 \
  --scao-kwargs '{"cuda_graph": true}' --out "$OUT/prof_graph.json" > "$W/prof_graph.log" 2>&1
echo "profile rc=$?"; grep -E "step\(\)|GPU busy" "$W/prof_graph.log" | cut -c1-160
timeout 120 python3 -m bench.capture_check --size small --steps 20 --out "$W/capture_small.json" \
  > "$W/capture_small.log" 2>&1
echo "capture rc=$?"
python3 -c "import json; d=json.load(open('$W/capture_small.json')); print({k: d[k] for k in ('bit_exact','first_weight_mismatch_step','state_mismatch_counts','graph_counts','step_ms_median')})"
LEFT=$(( 540 - ($(date +%s) - T0) ))
echo "sweep gets ${LEFT}s"
if [ "$LEFT" -gt 40 ]; then
  timeout "$LEFT" python3 -m bench.kernels --only complement_update,residual_sumsq --match "k=144" --sweep \
    --warmup 10 --rep 40 --out "$W/sweep.json" > "$W/sweep.log" 2>&1
  echo "sweep rc=$?"; grep -E "sweep " "$W/sweep.log" | cut -c1-220
fi
tar czf "$OUT/session_zn.tgz" -C "$W" --exclude triton_cache .
