#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200), 2026-12-03 (fourteenth session): which scao_dist lines launch the torch
# kernels of the 405M captured step (bench.glue_trace: the step's body run eagerly with device inputs, GPU time
# per step by the launching line).
NAME=ub
. bench/session_lib.sh
timeout 300 python3 -m bench.glue_trace --size large --steps 3 --top 60 --out "$OUT/glue_large.json" > "$W/glue_large.log" 2>&1
echo "glue rc=$?"
grep -v USDT "$W/glue_large.log" | cut -c1-260 | head -130
pack
