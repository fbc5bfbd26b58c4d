#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200), 2026-12-04 (nineteenth session): session_pa again after its lesson — a
# (rows, chunks) grid ran consecutive programs a row apart (rows off the grid: fp32 x 85% -> 79%); now one axis, each
# program one chunk of one row, consecutive programs consecutive in memory (common.row_tile, common.row_launch).
# Three pairs against one axis of groups (--set moments.EMA_ROWS=false), the launch swept, rotated_adam_ likewise.
NAME=pb
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
sweep odd ema_signed_ odd '[{"moments.EMA_BG_ODD": 16}, {"moments.EMA_BG_ODD": 16, "moments.EMA_WARPS_ODD": 2}, {"moments.EMA_BG_ODD": 32, "moments.EMA_WARPS_ODD": 4}, {"moments.EMA_BG_ODD": 8, "moments.EMA_WARPS_ODD": 2}, {"moments.EMA_ROWS": false}]'
for r in 1 2; do
  kernels "adam_rows_$r" . 90 --only rotated_adam_ --set moments.ADAM_ROWS=true
  grep -E "GB/s \(|verif" "$W/kernels_adam_rows_$r.log"
  kernels "adam_flat_$r" . 90 --only rotated_adam_
  grep -E "GB/s \(|verif" "$W/kernels_adam_flat_$r.log"
done
rm -f "$OUT"/kernels_adam_*_2.json
pack
