#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200): the captured groups replayed largest first (the host prepares the next
# replay while a long one runs). The 405M step() without refreshes, captured, with fused AdamW in the same
# process (bench.step_profile); then bench.capture_check on the 405M GPT: eager, device inputs and graphs bit for
# bit with the session's kernels (unmasked low-rank tiles, the bits' product) at full size.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/session_zp}
W=/tmp/session_zp_work
mkdir -p "$OUT" "$W"
export TRITON_CACHE_DIR=$W/triton_cache
timeout 130 python3 -m bench.step_profile --size large --cases scao_norefresh,adamw --steps 30 --profile-steps 5 \
  --scao-kwargs '{"cuda_graph": true}' --out "$OUT/prof_graph.json" > "$W/prof_graph.log" 2>&1
echo "profile rc=$?"; grep -E "step\(\)|GPU busy|inside step" "$W/prof_graph.log" | cut -c1-160
timeout 300 python3 -m bench.capture_check --size large --steps 24 --out "$OUT/capture_large.json" \
  > "$W/capture_large.log" 2>&1
echo "capture rc=$?"
python3 -c "import json; d=json.load(open('$OUT/capture_large.json')); print({k: d[k] for k in ('bit_exact','first_weight_mismatch_step','state_mismatch_counts','graph_counts','graph_failed_groups','capture_steps','step_ms_median')})"
tar czf "$OUT/session_zp.tgz" -C "$W" --exclude triton_cache .
