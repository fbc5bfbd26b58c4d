#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200), 2026-12-04 (eighteenth session): the group kernels' offsets in int32 where they
# fit (common.int32_offsets) against int64 (--set common.INT32_OFFSETS=false) in the same call, twice on the first
# moment's odd rows; then bench.glue_trace on the 43M GPT (the small copies of its step, BENCHMARKS §0's lead).
NAME=qc
. bench/session_lib.sh
kernels i32 . 120 --only ema_signed_,adamw_,rotated_adam_
grep -E "GB/s \(|verif" "$W/kernels_i32.log"
kernels i64 . 120 --only ema_signed_,adamw_,rotated_adam_ --set common.INT32_OFFSETS=false
grep -E "GB/s \(|verif" "$W/kernels_i64.log"
for r in 2 3; do
  kernels "odd_i32_$r" . 60 --only ema_signed_ --match odd
  grep -E "GB/s \(" "$W/kernels_odd_i32_$r.log"
  kernels "odd_i64_$r" . 60 --only ema_signed_ --match odd --set common.INT32_OFFSETS=false
  grep -E "GB/s \(" "$W/kernels_odd_i64_$r.log"
done
rm -f "$OUT"/kernels_odd_*.json
timeout 150 python3 -m bench.glue_trace --size small --out "$OUT/glue_small.json" > "$W/glue_small.log" 2>&1
echo "glue small rc=$?"
head -c 6000 "$W/glue_small.log"
pack
