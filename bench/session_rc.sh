#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200), 2026-12-04 (seventeenth session): master_update's short form back (rb: the
# two-product division by ulp made apply_update_ bf16+int8 9% slower at fewer instructions), the odd rows' launch at
# 8 groups on one warp (rb's sweep), the decode table against the branch-free division per kernel, and the companding
# division without its Newton step (common.COMPANDING_NEWTON=false, a switch in common.py for this call only, since
# removed): the exhaustive check says whether any code moves.
NAME=rc
. bench/session_lib.sh
K=ema_signed_,adamw_,apply_update_
timeout 150 python3 -m bench.kernels --only $K,division --out "$OUT/kernels_new.json" > "$W/kernels_new.log" 2>&1
echo "kernels new rc=$?"
kernels_report "$OUT"/kernels_new.json
timeout 150 python3 -m bench.kernels --only ema_signed_,adamw_,division --set common.COMPANDING_NEWTON=false \
  --out "$OUT/kernels_nonewton.json" > "$W/kernels_nonewton.log" 2>&1
echo "kernels no-newton rc=$?"
kernels_report "$OUT"/kernels_nonewton.json
sweep ema_odd ema_signed_ odd '[{"moments.EMA_BG_ODD": 4, "moments.EMA_WARPS_ODD": 1},
{"moments.EMA_BG_ODD": 16, "moments.EMA_WARPS_ODD": 1}, {"moments.EMA_BG_ODD": 8, "moments.EMA_WARPS_ODD": 2},
{"moments.DECODE_LUT_ODD": false}, {"moments.EMA_BG_ODD": 16, "moments.EMA_WARPS_ODD": 1, "moments.DECODE_LUT_ODD": false}]'
sweep ema_aligned ema_signed_ "(B,2048" '[{"moments.DECODE_LUT": false},
{"moments.DECODE_LUT": false, "moments.EMA_BG": 32, "moments.EMA_WARPS": 2},
{"moments.DECODE_LUT": false, "moments.EMA_BG": 32, "moments.EMA_WARPS": 1},
{"moments.DECODE_LUT": false, "moments.EMA_BG": 16, "moments.EMA_WARPS": 1}, {"moments.EMA_BG": 32, "moments.EMA_WARPS": 2}]'
sweep adamw adamw_ "" '[{"adamw.DECODE_LUT": false}, {"adamw.DECODE_LUT": false, "adamw.MAXNREG": 72},
{"adamw.DECODE_LUT": false, "adamw.BG": 32, "adamw.WARPS": 2}, {"adamw.DECODE_LUT": false, "adamw.BG": 8}]'
pack
