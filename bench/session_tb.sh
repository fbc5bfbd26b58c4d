#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200), 2026-12-03 (fifteenth session), after ta: (1) the first moment's and adamw_'s
# block size and warps swept over all their timed cases (ta's sweep of the bf16 cases found 64 groups on 2 warps
# best for the first moment, with fewer instructions the kernel holds more values per thread to advantage);
# (2) the residual sums with the product accumulated onto -G (lowrank.SUMSQ_FROM_G: G not held across the loop),
# verified against the twins and timed against the default in one call; (3) the 405M step with each, alternating.
NAME=tb
. bench/session_lib.sh
timeout 150 python3 -m bench.kernels --only ema_signed_,adamw_ --sweep --out "$OUT/kernels_sweep.json" \
  > "$W/kernels_sweep.log" 2>&1
echo "sweep rc=$?"; grep -E "sweep|GB/s|verify" "$W/kernels_sweep.log" | head -16
timeout 120 python3 -m bench.kernels --only residual_sumsq,residual_stats --out "$OUT/kernels_rs.json" \
  > "$W/kernels_rs.log" 2>&1
echo "rs default rc=$?"; grep -E "GB/s|verify" "$W/kernels_rs.log" | head -12
timeout 120 python3 -c "import sys; from scao_dist.kernels import lowrank; lowrank.SUMSQ_FROM_G = True; import bench.kernels as k; sys.exit(k.main(sys.argv[1:]))" \
  --only residual_sumsq,residual_stats --out "$OUT/kernels_rs_fromg.json" > "$W/kernels_rs_fromg.log" 2>&1
echo "rs from_g rc=$?"; grep -E "GB/s|verify" "$W/kernels_rs_fromg.log" | head -12
E='--set moments.EMA_BG=64 --set moments.EMA_WARPS=2'
F='--set lowrank.SUMSQ_FROM_G=true'
profile base
profile ema . '"cuda_graph": true' "$E"
profile fromg . '"cuda_graph": true' "$F"
profile both . '"cuda_graph": true' "$E $F"
profile base2
profile both2 . '"cuda_graph": true' "$E $F"
summary
pack
