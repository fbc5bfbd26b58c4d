#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200), 2026-12-03 (fourteenth session), the last of the session's device time
# (~320 s): capture_check of this tree (the half that only feeds a sketch formed in bf16; the gates' comparison once
# a step), then the 405M step: this tree, ab_old/ = 62e2fc3, and this tree with the low-rank kernels' registers
# capped at 168 (Triton's maxnreg: 3 programs per multiprocessor instead of 2; va found them latency-bound).
NAME=ue
. bench/session_lib.sh
timeout 70 python3 -m bench.capture_check --size small --steps 14 --grow-at 8 --nan-at 11 \
  --out "$OUT/capture_small_grow.json" > "$W/capture_small_grow.log" 2>&1
echo "capture small rc=$?"
python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print({k: d.get(k) for k in ('bit_exact','state_mismatch_counts','graph_counts','inputs_counts','skipped_steps')})" "$OUT/capture_small_grow.json"
profile new
profile old ab_old
profile cap . '"cuda_graph": true' '--set lowrank.COMPLEMENT_MAXNREG=168 --set lowrank.SUMSQ_MAXNREG=168'
summary
pack
