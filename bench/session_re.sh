#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200), 2026-12-04 (seventeenth session): the first moment on rows of a multiple of 32
# now decoded by the division on 16 groups a warp (moments.DECODE_LUT false, EMA_BG 16, EMA_WARPS 1: rd's step
# profile), verified and timed on every case against the previous defaults (the table, 64 groups on 2 warps) and
# ab_old/ = c1b130b in the same call.
NAME=re
. bench/session_lib.sh
timeout 120 python3 -m bench.kernels --only ema_signed_,division --out "$OUT/kernels_new.json" \
  > "$W/kernels_new.log" 2>&1
echo "kernels new rc=$?"
kernels_report "$OUT"/kernels_new.json
sweep ema ema_signed_ "" '[{"moments.DECODE_LUT": true, "moments.EMA_BG": 64, "moments.EMA_WARPS": 2},
{"moments.DECODE_LUT": false, "moments.EMA_BG": 32, "moments.EMA_WARPS": 2}]'
(cd ab_old && timeout 100 python3 -m bench.kernels --only ema_signed_ --out "$OUT/kernels_old.json" \
  > "$W/kernels_old.log" 2>&1; echo "kernels old rc=$?"; grep -E "GB/s \(" "$W/kernels_old.log")
cp "$W/sweep_ema.json" "$OUT/"
pack
