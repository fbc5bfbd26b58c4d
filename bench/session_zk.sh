#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200): captured steps whose gradients autograd accumulates straight into the graphs'
# buffers (SCAO.zero_grad installs them as .grad views): bench.capture_check on the 43M and 405M GPTs (bit for bit
# against eager), then the training loops with their peak memory (405M precond_freq 10, 43M), eager and captured.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/session_zk}
W=/tmp/session_zk_work
mkdir -p "$OUT" "$W"
export TRITON_CACHE_DIR=$W/triton_cache
for s in small large; do
  timeout 150 python3 -m bench.capture_check --size $s --steps 30 --out "$OUT/capture_$s.json" > "$W/capture_$s.log" 2>&1
  echo "capture $s rc=$?"
done
G='graph={"cuda_graph": true, "precond_freq": 10}'
timeout 120 python3 -m bench.compare --size large --optimizers graph,eager --scao-variant "$G" \
  --scao-variant 'eager={"precond_freq": 10}' --lrs "eager=1e-3;graph=1e-3" --steps 40 --warmup 10 \
  --eval-every 40 --eval-batches 2 --timing-skip 10 --profile-phases 10 --no-report \
  --out "$W/f10" > "$W/f10.log" 2>&1; echo "large rc=$?"
timeout 100 python3 -m bench.compare --size small --optimizers graph --scao-variant 'graph={"cuda_graph": true}' \
  --lrs "graph=1e-3" --steps 300 --eval-every 300 --eval-batches 4 --no-report \
  --out "$W/small" > "$W/small.log" 2>&1; echo "small rc=$?"
tar czf "$OUT/session_zk.tgz" -C "$W" --exclude triton_cache .
for s in small large; do
  python3 -c "import json; d=json.load(open('$OUT/capture_$s.json')); print('$s', {k: d[k] for k in ('bit_exact','first_weight_mismatch_step','state_mismatch_counts','graph_counts','graph_failed_groups','capture_steps','step_ms_median')})"
done
grep -h "^\[run.*ok" "$W"/f10.log "$W"/small.log
python3 -m bench.refresh_summary "$W" f10 2>&1 | tail -3
