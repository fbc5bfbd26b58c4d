#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200), 2026-12-03 (sixteenth session): sa's codec changes plus the group kernels' row
# index by a high product and a shift instead of an integer division (common.div_magic), verified against the twins
# and timed against ab_old/ = 188bb59 (the session's start) in the same call; adamw_ under register caps; the 405M
# step alternating new/old; capture_check (recaptures on two lanes, NaN steps) small and large.
NAME=sb
. bench/session_lib.sh
K=ema_signed_,rotated_adam_,adamw_
kernels new . 150 --only $K,division
kernels old ab_old 100 --only $K
kernels_report "$OUT"/kernels_*.json
G='[{"adamw.BG": 64, "num_warps": 4}, {"adamw.BG": 16, "num_warps": 1}, {"adamw.BG": 64, "num_warps": 4, "maxnreg": 64},
{"adamw.BG": 64, "num_warps": 4, "maxnreg": 72}, {"adamw.BG": 16, "num_warps": 1, "maxnreg": 64},
{"adamw.BG": 32, "num_warps": 2, "maxnreg": 64}, {"adamw.BG": 32, "num_warps": 2, "maxnreg": 56}]'
timeout 90 python3 -m bench.kernels --only adamw_ --sweep --grid "$G" --out "$OUT/sweep_adamw_.json" \
  > "$W/sweep_adamw_.log" 2>&1
echo "sweep adamw_ rc=$?"; grep -E "sweep|GB/s" "$W/sweep_adamw_.log" | head -8
capture_grow
profile_ab 1
summary
capture
pack
