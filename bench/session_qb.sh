#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200), 2026-12-04 (eighteenth session): rotated_adam_ on 16 groups a warp (qa's
# sweep) verified and timed with adamw_ against ab_old/ = 74fddfa in the same call; the 405M step of this tree against
# ab_old twice, alternating; capture_check small (recaptures, a NaN step) on the new second moment.
NAME=qb
. bench/session_lib.sh
kernels new . 120 --only adamw_,rotated_adam_
grep -E "GB/s \(|verif" "$W/kernels_new.log"
kernels old ab_old 100 --only adamw_,rotated_adam_
grep -E "GB/s \(" "$W/kernels_old.log"
capture_grow
profile_ab 2
summary
pack
