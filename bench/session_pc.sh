#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200), 2026-12-04 (nineteenth session): 32-wide rank chunks for the complement when
# every factor is bf16 (lowrank.COMPLEMENT_BK_BF16, the step's case; session_qf's lead) against 16 (--set
# lowrank.COMPLEMENT_BK_BF16=16) in the 405M step, alternating; the complement verified on the H200 first (its new
# all-bf16 cases included) and the first moment's odd rows timed once more.
NAME=pc
. bench/session_lib.sh
kernels cu . 120 --only complement_update --match "bf16 X_m"
grep -E "GB/s \(|verif" "$W/kernels_cu.log"
kernels cu16 . 120 --only complement_update --match "bf16 X_m" --set lowrank.COMPLEMENT_BK_BF16=16
grep -E "GB/s \(|verif" "$W/kernels_cu16.log"
profile bk32
profile bk16 . '"cuda_graph": true' '--set lowrank.COMPLEMENT_BK_BF16=16'
profile bk32_2
if [ "$SECONDS" -lt 430 ]; then profile bk16_2 . '"cuda_graph": true' '--set lowrank.COMPLEMENT_BK_BF16=16'; fi
summary
pack
