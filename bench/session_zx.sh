#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200): as session_zw, with the weight blocks' addresses declared 64-byte aligned
# to the compiler (tl.multiple_of; WeightBlocks.of refuses others): session_zw's complement kernel lost 0.35 ms a
# step to scalar loads through the table. The kernel vs its twin on such blocks (kernel_checks.check_weight_blocks
# on CUDA); bench.kernels' complement cases; the 405M step() without refreshes, captured, with fused AdamW in the
# same process; capture_check on the 405M GPT (bit for bit).
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/session_zx}
W=/tmp/session_zx_work
mkdir -p "$OUT" "$W"
export TRITON_CACHE_DIR=$W/triton_cache
timeout 100 python3 -c "
import sys, torch; sys.path.insert(0, 'tests')
import kernel_checks
errs = kernel_checks.check_weight_blocks(torch.device('cuda'))
print('weight blocks on the GPU:', 'ok' if not errs else errs[:5])
" 2>&1 | tail -3
timeout 120 python3 -m bench.kernels --only complement_update --out "$OUT/kernels.json" > "$OUT/kernels.log" 2>&1
echo "kernels rc=$?"; grep -E "verif|mismatch" "$OUT/kernels.log" | head -4
timeout 110 python3 -m bench.step_profile --size large --cases scao_norefresh,adamw --steps 30 --profile-steps 5 \
  --scao-kwargs '{"cuda_graph": true}' --out "$OUT/prof_graph.json" > "$W/prof_graph.log" 2>&1
echo "profile rc=$?"; grep -E "step\(\)|GPU busy|inside step|ms .*x  " "$W/prof_graph.log" | cut -c1-200 | head -30
timeout 150 python3 -m bench.capture_check --size large --steps 24 --out "$OUT/capture_large.json" \
  > "$W/capture_large.log" 2>&1
echo "capture rc=$?"
python3 -c "import json; d=json.load(open('$OUT/capture_large.json')); print({k: d[k] for k in ('bit_exact','first_weight_mismatch_step','state_mismatch_counts','graph_counts','graph_failed_groups','step_ms_median')})"
tar czf "$OUT/session_zx.tgz" -C "$W" --exclude triton_cache .
