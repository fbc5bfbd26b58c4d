#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200), 2026-12-03 (thirteenth session), the first: Nsight Compute on the 405M step's
# hot kernels as the step calls them (bench.ncu_kernels: the first moment with a bf16 G and a bf16 M, the applied
# complement with bf16 factors, the residual statistics, the second moment, the NaN/inf check), to see what bounds
# each (issue slots, memory, stalls by source line); their bench.kernels timings; one step profile of this tree.
NAME=va
. bench/session_lib.sh
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu | head -1); echo "ncu: $NCU"
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,clocks.mem --format=csv
K='regex:_ema_signed_kernel|_complement_update_kernel|_sumsq_kernel|_stats_kernel|_rotated_adam_kernel|_finite_gather_kernel'
timeout 240 "$NCU" --clock-control none --set full --import-source no -k "$K" --launch-count 12 -f -o "$OUT/ncu_va" \
  python3 -m bench.ncu_kernels --repeat 1 \
  --case 'ema_signed_:bf16 x, bf16 out' \
  --case 'complement_update:bf16 X_u, bf16 X_m' \
  --case 'residual_stats:bf16 X_g' \
  --case 'rotated_adam_:bc per block' \
  --case 'finite_gather:column blocks' > "$W/ncu.log" 2>&1
echo "ncu rc=$?"; tail -5 "$W/ncu.log"
"$NCU" -i "$OUT/ncu_va.ncu-rep" --page details > "$OUT/ncu_details.txt" 2>&1; echo "details rc=$?"
"$NCU" -i "$OUT/ncu_va.ncu-rep" --page raw --csv > "$OUT/ncu_raw.csv" 2>&1; echo "raw rc=$?"
"$NCU" -i "$OUT/ncu_va.ncu-rep" --page source --csv --print-source sass > "$OUT/ncu_source.csv" 2>&1; echo "source rc=$?"
grep -E "^  [_a-z]|Duration|Compute \(SM\) Throughput|Memory Throughput|DRAM Throughput|Issue Slots Busy|Executed Ipc A|Registers Per|Achieved Occupancy|No Eligible|Warp Cycles Per Issued" "$OUT/ncu_details.txt" | head -120
timeout 150 python3 -m bench.kernels --only ema_signed_,complement_update,residual_stats --match 2048 \
  --out "$OUT/kernels.json" > "$W/kernels.log" 2>&1
echo "kernels rc=$?"; grep -E "GB/s|verification" "$W/kernels.log"
profile new
pack
