#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200), 2026-12-04 (seventeenth session): the first moment on rows off the 16-byte grid
# read lane by lane (moments.EMA_LANEWISE, on and off), adamw_'s and the first moment's aligned path without the
# padding's where, master_update's short division by ulp as two exact products; verified against the twins and timed
# against ab_old/ = c1b130b (the sixteenth session's end) in the same call; the odd rows' launch and adamw_'s
# register cap swept; the 405M step alternating new/old (the sixteenth session's final tree was never profiled).
NAME=ra
. bench/session_lib.sh
K=ema_signed_,adamw_,apply_update_
kernels new . 120 --only $K
kernels old ab_old 100 --only $K
timeout 60 python3 -m bench.kernels --only ema_signed_ --match odd --set moments.EMA_LANEWISE=false \
  --out "$OUT/kernels_nolanewise.json" > "$W/kernels_nolanewise.log" 2>&1
echo "kernels no-lanewise rc=$?"
kernels_report "$OUT"/kernels_*.json
G='[{"moments.EMA_BG_ODD": 16, "moments.EMA_WARPS_ODD": 1}, {"moments.EMA_BG_ODD": 16, "moments.EMA_WARPS_ODD": 2},
{"moments.EMA_BG_ODD": 32, "moments.EMA_WARPS_ODD": 4}, {"moments.EMA_BG_ODD": 64, "moments.EMA_WARPS_ODD": 2},
{"moments.EMA_BG_ODD": 64, "moments.EMA_WARPS_ODD": 4}, {"moments.EMA_BG_ODD": 128, "moments.EMA_WARPS_ODD": 4}]'
timeout 90 python3 -m bench.kernels --only ema_signed_ --match odd --sweep --grid "$G" --out "$OUT/sweep_ema_odd.json" \
  > "$W/sweep_ema_odd.log" 2>&1
echo "sweep ema odd rc=$?"; grep -E "sweep|GB/s" "$W/sweep_ema_odd.log" | head -20
G='[{"adamw.MAXNREG": 56}, {"adamw.MAXNREG": 72}, {"adamw.MAXNREG": 80}, {"adamw.BG": 32, "adamw.WARPS": 2},
{"adamw.BG": 8, "adamw.WARPS": 1}, {"adamw.BG": 32, "adamw.WARPS": 1, "adamw.MAXNREG": 96}]'
timeout 90 python3 -m bench.kernels --only adamw_ --sweep --grid "$G" --out "$OUT/sweep_adamw_.json" \
  > "$W/sweep_adamw_.log" 2>&1
echo "sweep adamw_ rc=$?"; grep -E "sweep|GB/s" "$W/sweep_adamw_.log" | head -16
profile_ab 1
summary
pack
