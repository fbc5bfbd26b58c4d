#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200), 2026-12-04 (seventeenth session): ra's changes plus the signed decode's division
# by the companding's branch-free one (common.decode_signed; every code checked against div_rn), timed as an
# alternative to the decode table (moments.DECODE_LUT, DECODE_LUT_ODD, adamw.DECODE_LUT), and the odd rows' launch
# per x dtype; apply_update_ again against ab_old/ = c1b130b (ra had it at 94% against 102%).
NAME=rb
. bench/session_lib.sh
K=ema_signed_,adamw_,apply_update_
kernels new . 150 --only $K,division
kernels old ab_old 100 --only $K
kernels_report "$OUT"/kernels_*.json
for i in 1 2; do
  timeout 40 python3 -m bench.kernels --only apply_update_ --out "$OUT/apply_new$i.json" > "$W/apply_new$i.log" 2>&1
  (cd ab_old && timeout 40 python3 -m bench.kernels --only apply_update_ --out "$OUT/apply_old$i.json" \
    > "$W/apply_old$i.log" 2>&1)
  grep -h "GB/s (" "$W/apply_new$i.log" "$W/apply_old$i.log"
done
sweep() {  # LABEL KERNEL MATCH GRID
  timeout 120 python3 -m bench.kernels --only "$2" --match "$3" --sweep --grid "$4" --out "$OUT/sweep_$1.json" \
    > "$W/sweep_$1.log" 2>&1
  echo "sweep $1 rc=$?"; grep -E "sweep|GB/s \(" "$W/sweep_$1.log" | head -12
}
sweep ema_odd ema_signed_ odd '[{"moments.EMA_BG_ODD": 16, "moments.EMA_WARPS_ODD": 1},
{"moments.EMA_BG_ODD": 32, "moments.EMA_WARPS_ODD": 4}, {"moments.EMA_BG_ODD": 16, "moments.EMA_WARPS_ODD": 2},
{"moments.EMA_BG_ODD": 16, "moments.EMA_WARPS_ODD": 1, "moments.DECODE_LUT_ODD": false},
{"moments.EMA_BG_ODD": 32, "moments.EMA_WARPS_ODD": 4, "moments.DECODE_LUT_ODD": false},
{"moments.EMA_BG_ODD": 32, "moments.EMA_WARPS_ODD": 2, "moments.DECODE_LUT_ODD": false},
{"moments.EMA_BG_ODD": 8, "moments.EMA_WARPS_ODD": 1}]'
sweep ema_aligned ema_signed_ "(B," '[{"moments.DECODE_LUT": false},
{"moments.DECODE_LUT": false, "moments.EMA_BG": 32, "moments.EMA_WARPS": 2}]'
sweep adamw adamw_ "" '[{"adamw.DECODE_LUT": false}, {"adamw.MAXNREG": 72},
{"adamw.DECODE_LUT": false, "adamw.MAXNREG": 72}]'
pack
