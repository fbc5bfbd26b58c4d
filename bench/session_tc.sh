#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200), 2026-12-03 (fifteenth session), the last: this tree's defaults (ta's codec
# cuts, tb's block sizes and residual sums) against ab_old/ = 5ccab57 (the session's start), the 405M step
# alternating; capture_check (recaptures on two lanes, a NaN step) small and large; every kernel verified against its
# twin and timed (bench.kernels, no --only).
NAME=tc
. bench/session_lib.sh
capture_grow
profile_ab
summary
timeout 200 python3 -m bench.kernels --out "$OUT/kernels.json" > "$W/kernels.log" 2>&1
echo "kernels rc=$?"; grep -E "verify|GB/s" "$W/kernels.log" | head -40
capture
pack
