#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200), 2026-12-03 (sixteenth session): the codecs' roundings to integers by the
# hardware's conversions (common.rint_i32, floor_clamp), the encoders' no-op clamps left out, the second moments'
# square roots without the IEEE range check's branch (common.sqrt_nobranch) and master_update's ulp from w's
# exponent bits; verified against the twins and sqrt_nobranch against sqrt_rn over every fp32 in [0, inf]; the
# kernels timed against ab_old/ = 188bb59 (the session's start) in the same call, the square root's share on its
# own (--set common.HW_RSQRT=false: the IEEE one), and the block sizes swept again.
NAME=sa
. bench/session_lib.sh
K=ema_signed_,adamw_,rotated_adam_,apply_update_,factor_ema_corr_
kernels new . 200 --only $K,division
kernels old ab_old 150 --only $K
timeout 100 python3 -m bench.kernels --only adamw_,rotated_adam_ --set common.HW_RSQRT=false \
  --out "$OUT/kernels_ieee_sqrt.json" > "$W/kernels_ieee_sqrt.log" 2>&1
echo "kernels ieee sqrt rc=$?"
kernels_report "$OUT"/kernels_*.json
grep -iE "division|mismatch|differ" "$W/kernels_new.log" | head -12
for spec in "ema_signed_ odd" "adamw_ bf16" "factor_ema_corr_ 2048"; do
  set -- $spec
  timeout 90 python3 -m bench.kernels --only "$1" --match "$2" --sweep --rep 100 --out "$OUT/sweep_$1.json" \
    > "$W/sweep_$1.log" 2>&1
  echo "sweep $1 rc=$?"; grep -E "sweep|GB/s" "$W/sweep_$1.log" | head -8
done
pack
