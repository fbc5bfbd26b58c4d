#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200): captured group steps (SCAO(cuda_graph=True), scao_dist/capture.py).
# bench.capture_check: eager, device inputs without graphs, and CUDA graphs stepping one GPT with the same gradients
# and lr schedule, weights compared bit for bit after every step and the states at the end (43M, then 405M), each
# step() timed; then the 405M step without refreshes profiled eager and captured (bench.step_profile).
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/session_zh}
W=/tmp/session_zh_work
mkdir -p "$OUT" "$W"
export TRITON_CACHE_DIR=$W/triton_cache
timeout 150 python3 -m bench.capture_check --size small --steps 30 --out "$OUT/capture_small.json" \
  > "$OUT/capture_small.log" 2>&1
echo "capture small rc=$?"
timeout 240 python3 -m bench.capture_check --size large --steps 30 --out "$OUT/capture_large.json" \
  > "$OUT/capture_large.log" 2>&1
echo "capture large rc=$?"
prof() {  # name, extra SCAO kwargs
  timeout 130 python3 -m bench.step_profile --size large --cases scao_norefresh --steps 20 --profile-steps 5 \
    --scao-kwargs "$2" --out "$OUT/prof_$1.json" > "$W/prof_$1.log" 2>&1; echo "profile $1 rc=$?"
}
prof eager '{}'
prof graph '{"cuda_graph": true}'
for s in small large; do
  echo "== $s"; grep -E "^step" "$OUT/capture_$s.log" | tail -4 | cut -c1-170
  python3 -c "import json; d=json.load(open('$OUT/capture_$s.json')); print({k: d[k] for k in ('bit_exact','first_weight_mismatch_step','state_mismatch_counts','graph_counts','graph_failed_groups','capture_steps','step_ms_median')})"
  grep -E "Error|Warning|warn" "$OUT/capture_$s.log" | head -5
done
for f in eager graph; do echo "== $f"; grep -E "step\(\)|GPU busy|launches/step" "$W/prof_$f.log" | head -4; done
tar czf "$OUT/session_zh.tgz" -C "$W" --exclude triton_cache .
