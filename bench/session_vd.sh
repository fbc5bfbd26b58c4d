#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200), 2026-12-03 (thirteenth session): the session's end (this tree: replays on two
# streams by default, the lighter step wrapper) against its start (ab_old/ = 777c0ac, given this tree's
# bench/step_profile.py), alternating, three processes each; one process with three streams; capture_check bit for bit
# with the defaults (a NaN at step 16).
NAME=vd
. bench/session_lib.sh
capture
profile new
profile old ab_old
profile new2
profile old2 ab_old
profile new3
profile old3 ab_old
profile s3 . '"cuda_graph": true, "graph_streams": 3'
for f in "$OUT"/prof_*.json; do
  python3 -c "import json,sys; d=json.load(open(sys.argv[1])); c=d['cases']['scao_norefresh']; print(sys.argv[1].split('/')[-1], 'skipped', c['counters'].get('skipped_steps', 0), 'peak MB', c.get('peak_mb'), 'adamw peak', d['cases']['adamw'].get('peak_mb'))" "$f"
done
pack
