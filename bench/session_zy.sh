#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200): the captured step's replays recorded behind the non-finite check's
# device flag (a conditional node), so on one rank the host launches them without waiting for the check.
# capture_check on the 405M GPT with a NaN gradient at step 16 (no refreshes after the first bases, so the
# host defers the check; bit for bit against eager, the skip counted once); the 405M step() without refreshes,
# captured, with fused AdamW in the same process; ema_signed_'s launch settings with a bf16 output (--sweep).
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/session_zy}
W=/tmp/session_zy_work
mkdir -p "$OUT" "$W"
export TRITON_CACHE_DIR=$W/triton_cache
python3 -c "import torch; print(torch.__version__, torch.version.cuda, hasattr(torch.cuda.CUDAGraph, 'begin_capture_to_if_node'))"
timeout 150 python3 -m bench.capture_check --size large --steps 24 --nan-at 16 --scao-kwargs '{"precond_freq": 1000}' \
  --out "$OUT/capture_large.json" > "$W/capture_large.log" 2>&1
echo "capture rc=$?"; grep -iE "warn|error" "$W/capture_large.log" | head -5
python3 -c "import json; d=json.load(open('$OUT/capture_large.json')); print({k: d[k] for k in ('bit_exact','first_weight_mismatch_step','state_mismatch_counts','graph_counts','graph_failed_groups','graph_gated_groups','skipped_steps','steps_taken','step_ms_median')})"
timeout 110 python3 -m bench.step_profile --size large --cases scao_norefresh,adamw --steps 30 --profile-steps 5 \
  --scao-kwargs '{"cuda_graph": true}' --out "$OUT/prof_graph.json" > "$W/prof_graph.log" 2>&1
echo "profile rc=$?"; grep -E "step\(\)|GPU busy|inside step|ms .*x  " "$W/prof_graph.log" | cut -c1-200 | head -30
timeout 120 python3 -m bench.kernels --only ema_signed_ --sweep --match "bf16 out" --out "$OUT/kernels.json" > "$OUT/kernels.log" 2>&1
echo "kernels rc=$?"; grep -E "verif|mismatch|sweep|GB/s" "$OUT/kernels.log" | head -12
tar czf "$OUT/session_zy.tgz" -C "$W" --exclude triton_cache .
