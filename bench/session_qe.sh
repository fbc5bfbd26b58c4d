#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200), 2026-12-04 (eighteenth session): the non-finite check's kernel copying bf16
# gradients into fp32 group buffers (widening; qd found them left to torch on the 43M GPT) — verified and timed
# (bench.kernels --only finite_gather), the 43M step against ab_old/ = 74fddfa twice, alternating, and
# bench.glue_trace small again (which copies are left).
NAME=qe
. bench/session_lib.sh
kernels gather . 100 --only finite_gather
grep -E "GB/s \(|verif" "$W/kernels_gather.log"
SIZE=small profile_ab 2
summary
timeout 120 python3 -m bench.glue_trace --size small --out "$W/glue_small.json" > "$W/glue_small.log" 2>&1
echo "glue small rc=$?"
grep -E "direct_copy|finite" "$W/glue_small.log" | cut -c1-260 | head -12
pack
