#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200), 2026-12-03 (sixteenth session): which part of master_update's new form (the
# ulp step from w's exponent bits, the rounding by cvt.rni) made the step's applied complement slower in sc (0.566
# against 0.502 ms), each switched back on its own (apply.MASTER_ULP_BITS, apply.MASTER_RINT_CVT);
# ab_old/ = 188bb59 for reference. (Those two switches were temporary, in apply.py at the time of the call; the
# result made master_update take a SHORT constexpr instead: the short form in apply_update_ and adamw_, the long one
# in the complement.)
NAME=sd
. bench/session_lib.sh
M="applied, bf16 Q_R, bf16 M, bf16 X_u, bf16 X_m"
run() {
  local label=$1; shift
  timeout 60 python3 -m bench.kernels --only complement_update --match "$M" "$@" \
    --out "$OUT/kernels_$label.json" > "$W/kernels_$label.log" 2>&1
  echo "$label rc=$?"; grep -E "GB/s \(" "$W/kernels_$label.log" | head -4
}
run new
run ulp_old --set apply.MASTER_ULP_BITS=false
run rint_old --set apply.MASTER_RINT_CVT=false
run both_old --set apply.MASTER_ULP_BITS=false --set apply.MASTER_RINT_CVT=false
(cd ab_old && timeout 60 python3 -m bench.kernels --only complement_update --match "$M" --out "$OUT/kernels_old.json" \
  > "$W/kernels_old.log" 2>&1; echo "old rc=$?"; grep -E "GB/s \(" "$W/kernels_old.log" | head -4)
run new2
pack
