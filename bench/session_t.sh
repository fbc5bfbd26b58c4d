#!/usr/bin/env bash
# The two GPU calls after `moments.BG = 32` (device tool, nvidia-h200, warm machine; ~80 s), as they ran: the group
# kernels at the shipped configuration, the 405M step without refreshes, and a re-run of rotated_adam_'s sweep (the
# first call's 0.194 ms for its bc-per-block case did not repeat: 0.124 ms in the second).
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/session_t}
mkdir -p "$OUT"
timeout 150 python3 -m bench.kernels --only ema_signed_,rotated_adam_ --rep 100 --out "$OUT/kernels_bg32.json" \
  > "$OUT/kernels_bg32.log" 2>&1
timeout 200 python3 -m bench.step_profile --size large --cases scao_norefresh,adamw \
  --out "$OUT/step_large_norefresh.json" > "$OUT/step_large_norefresh.log" 2>&1
timeout 150 python3 -m bench.kernels --only rotated_adam_ --sweep --rep 100 --out "$OUT/kernels_rot.json" \
  > "$OUT/kernels_rot.log" 2>&1
grep -E "^\| |verification|sweep" "$OUT/kernels_bg32.log" "$OUT/kernels_rot.log"
grep -E "^== |GPU busy|launches/step" "$OUT/step_large_norefresh.log"
