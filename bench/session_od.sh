#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200), 2026-12-04 (twentieth session): where the 43M GPT's step spends its GPU time,
# by the scao_dist line that launched each kernel and copy (bench.glue_trace, the device-input path every captured
# group records) — the 15 direct copies a step and the host-to-device copies the GPU waits for in session_oc.
NAME=od
. bench/session_lib.sh
timeout 200 python3 -m bench.glue_trace --size small --steps 3 --depth 4 --top 45 --out "$OUT/glue_small.json" \
  > "$W/glue_small.log" 2>&1
echo "glue_trace rc=$?"
cut -c1-260 "$W/glue_small.log" | head -100
pack
