#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200): captured group steps in training loops. The 405M GPT at the default
# precond_freq 5, eager ("scao") against captured ("graph": cuda_graph=True), in both orders; the 43M GPT, 300 steps,
# AdamW, eager and captured (the README's table); torch AdamW's step() on the 405M model for the ratio; then
# bench.capture_check on the 405M again with the graph counters recorded.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/session_zi}
W=/tmp/session_zi_work
mkdir -p "$OUT" "$W"
export TRITON_CACHE_DIR=$W/triton_cache
G='graph={"cuda_graph": true}'
large() {  # name, optimizers
  timeout 150 python3 -m bench.compare --size large --optimizers "$2" --scao-variant "$G" --lrs "scao=1e-3;graph=1e-3" \
    --steps 40 --warmup 10 --eval-every 40 --eval-batches 2 --timing-skip 10 --profile-phases 10 --no-report \
    --out "$W/$1" > "$W/$1.log" 2>&1; echo "large $1 rc=$?"
}
large f5a scao,graph
large f5b graph,scao
timeout 150 python3 -m bench.compare --size small --optimizers adamw,scao,graph --scao-variant "$G" \
  --lrs "adamw=5e-4;scao=1e-3;graph=1e-3" --steps 300 --eval-every 300 --eval-batches 4 --no-report \
  --out "$W/small" > "$W/small.log" 2>&1; echo "small rc=$?"
timeout 100 python3 -m bench.step_profile --size large --cases adamw --steps 20 --out "$OUT/prof_adamw.json" \
  > "$W/prof_adamw.log" 2>&1; echo "adamw rc=$?"
timeout 150 python3 -m bench.capture_check --size large --steps 30 --out "$OUT/capture_large.json" \
  > "$W/capture_large.log" 2>&1; echo "capture large rc=$?"
tar czf "$OUT/session_zi.tgz" -C "$W" --exclude triton_cache .
grep -h "^\[run" "$W"/f5a.log "$W"/f5b.log "$W"/small.log
python3 -m bench.refresh_summary "$W" f5a f5b 2>&1 | tail -12
grep -E "step\(\)" "$W/prof_adamw.log" | head -2
python3 -c "import json; d=json.load(open('$OUT/capture_large.json')); print({k: d[k] for k in ('bit_exact','first_weight_mismatch_step','state_mismatch_counts','graph_counts','graph_failed_groups','capture_steps','step_ms_median')})"
