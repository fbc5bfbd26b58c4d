#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200), 2026-12-03 (fourteenth session): the step's glue cut (fp32 bases only where a
# product needs one, the three left factors of the complement from one product) against the session's start
# (ab_old/ = 2e4aefc), alternating, three processes each; capture_check with recaptures and the device-input path
# now really taken on the GPU (GroupGraphs keyed by cuda:0); bench.glue_trace of the device-input body.
NAME=uc
. bench/session_lib.sh
timeout 150 python3 -m bench.capture_check --size large --steps 20 --grow-at 10 --nan-at 16 \
  --out "$OUT/capture_large_grow.json" > "$W/capture_large_grow.log" 2>&1
echo "capture large grow rc=$?"
python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print({k: d.get(k) for k in ('bit_exact','first_weight_mismatch_step','state_mismatch_counts','graph_counts','inputs_counts','graph_groups','skipped_steps','steps_taken')})" "$OUT/capture_large_grow.json"
profile_ab 3
summary
timeout 200 python3 -m bench.glue_trace --size large --steps 3 --top 45 --out "$OUT/glue_large.json" > "$W/glue_large.log" 2>&1
echo "glue rc=$?"
grep -v USDT "$W/glue_large.log" | cut -c1-230 | head -95
pack
