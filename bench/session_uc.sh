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
profile new
profile old ab_old
profile new2
profile old2 ab_old
profile new3
profile old3 ab_old
for f in "$OUT"/prof_*.json; do
  python3 -c "import json,sys; d=json.load(open(sys.argv[1])); c=d['cases']['scao_norefresh']; sw=c['torch_profile'].get('step_windows',{}); print(sys.argv[1].split('/')[-1], 'step', c['step_ms']['median'], 'adamw', d['cases']['adamw']['step_ms']['median'], 'busy', sw.get('busy_ms'), 'wall', sw.get('wall_ms'), 'peak', c.get('peak_mb'), 'skipped', c['counters'].get('skipped_steps', 0))" "$f"
done
timeout 200 python3 -m bench.glue_trace --size large --steps 3 --top 45 --out "$OUT/glue_large.json" > "$W/glue_large.log" 2>&1
echo "glue rc=$?"
grep -v USDT "$W/glue_large.log" | cut -c1-230 | head -95
pack
