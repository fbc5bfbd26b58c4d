#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200; ~15 s after start): the group kernels verified against their twins with the
# small cases of every row alignment (NMUL 1, 2, 4, 8, 16; `898ed51`), then timed once more at the shipped settings.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/session_w}
mkdir -p "$OUT"
timeout 150 python3 -m bench.kernels --only ema_signed_,rotated_adam_,adamw_ --rep 20 --warmup 5 \
  --out "$OUT/kernels_verify_nmul.json" > "$OUT/kernels_verify_nmul.log" 2>&1
echo "rc=$?"
grep -E "verify|verification|^\| " "$OUT/kernels_verify_nmul.log"
