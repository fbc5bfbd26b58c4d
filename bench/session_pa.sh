#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200), 2026-12-04 (nineteenth session): the first moment's rows off the 32-value grid
# launched over (rows, groups of a row) programs (moments.EMA_ROWS, common.row_tile) against one axis of groups
# (--set moments.EMA_ROWS=false) in the same call, three pairs; its launch swept again; rotated_adam_ over rows
# (moments.ADAM_ROWS) against its default, verified and timed.
NAME=pa
. bench/session_lib.sh
kernels ema . 150 --only ema_signed_
grep -E "GB/s \(|verif" "$W/kernels_ema.log"
for r in 1 2 3; do
  kernels "odd_rows_$r" . 60 --only ema_signed_ --match odd
  grep -E "GB/s \(" "$W/kernels_odd_rows_$r.log"
  kernels "odd_flat_$r" . 60 --only ema_signed_ --match odd --set moments.EMA_ROWS=false
  grep -E "GB/s \(" "$W/kernels_odd_flat_$r.log"
done
rm -f "$OUT"/kernels_odd_*_[23].json
sweep odd ema_signed_ odd '[{"moments.EMA_BG_ODD": 4}, {"moments.EMA_BG_ODD": 16}, {"moments.EMA_BG_ODD": 16, "moments.EMA_WARPS_ODD": 2}, {"moments.EMA_BG_ODD": 32, "moments.EMA_WARPS_ODD": 2}, {"moments.DECODE_LUT_ODD": false}, {"moments.EMA_LANEWISE": false}]'
for r in 1 2; do
  kernels "adam_rows_$r" . 90 --only rotated_adam_ --set moments.ADAM_ROWS=true
  grep -E "GB/s \(|verif" "$W/kernels_adam_rows_$r.log"
  kernels "adam_flat_$r" . 90 --only rotated_adam_
  grep -E "GB/s \(|verif" "$W/kernels_adam_flat_$r.log"
done
rm -f "$OUT"/kernels_adam_*_2.json
pack
