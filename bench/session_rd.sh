#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200), 2026-12-04 (seventeenth session): the tree of df090e7 — every kernel verified and
# timed (the full bench.kernels suite, the division/decode/square-root checks included), the 405M step against
# ab_old/ = c1b130b (the sixteenth session's end) and once with the first moment's rows on the grid decoded by the
# division on 16 groups a warp (rc's sweep: 0.97x alone), capture_check small (recaptures, a NaN step).
NAME=rd
. bench/session_lib.sh
timeout 300 python3 -m bench.kernels --out "$OUT/kernels_all.json" > "$W/kernels_all.log" 2>&1
echo "kernels all rc=$?"
kernels_report "$OUT"/kernels_all.json
capture_grow
profile_ab 1
profile ema16 . '"cuda_graph": true' "--set moments.DECODE_LUT=false --set moments.EMA_BG=16 --set moments.EMA_WARPS=1"
summary
pack
