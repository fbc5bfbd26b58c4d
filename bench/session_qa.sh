#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200), 2026-12-04 (eighteenth session): Adam's denominator from the second moment's
# codes (common.adam_root: no square, no square root a value) and the encode's square root without its rescaling
# (common.sqrt_fast, v clamped at 2^-100) — every kernel verified and timed (the full bench.kernels suite, the
# square root checked on every operand it takes), adamw_ and rotated_adam_ of ab_old/ = 74fddfa (the seventeenth
# session's end) in the same call, launch sweeps of both kernels and of the first moment on odd rows with bf16 x.
NAME=qa
. bench/session_lib.sh
kernels all . 300
kernels_report "$OUT"/kernels_all.json
kernels old ab_old 100 --only adamw_,rotated_adam_
grep -E "GB/s \(" "$W/kernels_old.log"
sweep adamw adamw_ "" '[{"adamw.BG": 16, "adamw.WARPS": 1, "adamw.MAXNREG": 48}, {"adamw.BG": 16, "adamw.WARPS": 1,
"adamw.MAXNREG": 56}, {"adamw.BG": 16, "adamw.WARPS": 1, "adamw.MAXNREG": null}, {"adamw.BG": 32, "adamw.WARPS": 1,
"adamw.MAXNREG": 64}, {"adamw.BG": 32, "adamw.WARPS": 2, "adamw.MAXNREG": 64}, {"adamw.BG": 8, "adamw.WARPS": 1,
"adamw.MAXNREG": 64}]'
sweep rot rotated_adam_ "" '[{"moments.BG": 16, "num_warps": 1}, {"moments.BG": 16, "num_warps": 2},
{"moments.BG": 32, "num_warps": 2}, {"moments.BG": 64, "num_warps": 4}, {"moments.BG": 32, "num_warps": 1},
{"moments.BG": 64, "num_warps": 2}]'
sweep odd ema_signed_ "odd, bf16" '[{"moments.EMA_BG_ODD": 4, "moments.EMA_WARPS_ODD": 1},
{"moments.EMA_BG_ODD": 8, "moments.EMA_WARPS_ODD": 1, "moments.DECODE_LUT_ODD": false},
{"moments.EMA_BG_ODD": 16, "moments.EMA_WARPS_ODD": 1}, {"moments.EMA_BG_ODD": 16, "moments.EMA_WARPS_ODD": 2},
{"moments.EMA_BG_ODD": 8, "moments.EMA_WARPS_ODD": 1, "moments.EMA_LANEWISE": false}]'
pack
