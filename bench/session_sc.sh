#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200), 2026-12-03 (sixteenth session): adamw_ on sb's sweep winner (16 groups, one
# warp, 64 registers) verified and timed; the step's complement (applied to bf16 weights + int8 bits, whose
# master_update changed) against ab_old/ = 188bb59 in the same call; the 405M step alternating new/old twice (sb's
# old-tree profile had failed: ab_old lacked bench/knobs.py); capture_check small (recaptures, a NaN step).
NAME=sc
. bench/session_lib.sh
timeout 80 python3 -m bench.kernels --only adamw_ --out "$OUT/kernels_adamw.json" > "$W/kernels_adamw.log" 2>&1
echo "kernels adamw rc=$?"
M="applied, bf16 Q_R, bf16 M, bf16 X_u, bf16 X_m"
timeout 100 python3 -m bench.kernels --only complement_update --match "$M" --out "$OUT/kernels_cu_new.json" \
  > "$W/kernels_cu_new.log" 2>&1
echo "kernels complement new rc=$?"
(cd ab_old && timeout 100 python3 -m bench.kernels --only complement_update --match "$M" \
  --out "$OUT/kernels_cu_old.json" > "$W/kernels_cu_old.log" 2>&1)
echo "kernels complement old rc=$?"
kernels_report "$OUT"/kernels_*.json
capture_grow
profile_ab 2
summary
pack
