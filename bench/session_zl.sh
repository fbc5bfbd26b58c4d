#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200): recapturing while the refresh worker runs. bench.capture_check on the 43M GPT
# with every stream basis widened by 16 columns before step 8 (--grow-at), weights compared bit for bit after every
# step against eager, states at the end.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/session_zl}
mkdir -p "$OUT"
timeout 130 python3 -m bench.capture_check --size small --steps 14 --grow-at 8 --out "$OUT/capture_grow.json" \
  > "$OUT/capture_grow.log" 2>&1
echo "capture rc=$?"
python3 -c "import json; d=json.load(open('$OUT/capture_grow.json')); print({k: d[k] for k in ('bit_exact','first_weight_mismatch_step','state_mismatch_counts','graph_counts','graph_failed_groups','capture_steps')})"
grep -iE "warn|error" "$OUT/capture_grow.log" | head -5
