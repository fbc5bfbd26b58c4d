#!/usr/bin/env bash
# GPU call: kernel check + bandwidth, then SCAO's step time and phase breakdown next to fused AdamW
# on the 43M and 405M GPTs (short runs: timing, not quality). Outputs under $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/session_a}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
timeout 150 python3 -m bench.kernels --out "$OUT/kernels.json" > "$OUT/kernels.log" 2>&1; echo "kernels rc=$?"
tail -25 "$OUT/kernels.log"
timeout 170 python3 -m bench.compare --size small --optimizers adamw,scao --lrs "adamw=5e-4;scao=1e-3" \
  --steps 70 --warmup 10 --eval-every 70 --eval-batches 2 --timing-skip 25 --profile-phases 10 \
  --max-corpus-bytes 20000000 --out "$OUT/small" > "$OUT/small.log" 2>&1; echo "small rc=$?"
timeout 200 python3 -m bench.compare --size large --optimizers adamw,scao --lrs "adamw=5e-4;scao=1e-3" \
  --steps 35 --warmup 5 --eval-every 35 --eval-batches 1 --timing-skip 15 --profile-phases 6 \
  --max-corpus-bytes 20000000 --out "$OUT/large" > "$OUT/large.log" 2>&1; echo "large rc=$?"
tar czf "$OUT/runs.tgz" -C "$OUT" small large 2>/dev/null
tail -45 "$OUT/small.log"; tail -45 "$OUT/large.log"
