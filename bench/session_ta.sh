#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200), 2026-12-03 (fifteenth session): the codecs' last per-value division without
# its range check (common.div_companding: the hardware reciprocal, a Newton step and the remainder's correction)
# and every fp32 -> bf16 rounding by the hardware's conversion (common.f32_to_bf16), verified against the twins and
# the companding's division against div_rn over every fp32 in [-1, 1]; timed against ab_old/ = 5ccab57 (the
# session's start) in the same call: the group kernels, the applied complement, the 405M step alternating.
NAME=ta
. bench/session_lib.sh
K=ema_signed_,adamw_,apply_update_,complement_update
timeout 200 python3 -m bench.kernels --only $K,division --out "$OUT/kernels_new.json" > "$W/kernels_new.log" 2>&1
echo "kernels new rc=$?"
(cd ab_old && timeout 150 python3 -m bench.kernels --only $K --out "$OUT/kernels_old.json" > "$W/kernels_old.log" 2>&1)
echo "kernels old rc=$?"
kernels_report "$OUT"/kernels_*.json
grep -iE "division|mismatch|differ" "$W/kernels_new.log" | head -12
capture_grow
profile_ab
summary
timeout 100 python3 -m bench.kernels --only ema_signed_,adamw_ --match "bf16" --sweep --out "$OUT/kernels_sweep.json" \
  > "$W/kernels_sweep.log" 2>&1
echo "sweep rc=$?"; grep -E "sweep|GB/s" "$W/kernels_sweep.log" | head -12
pack
