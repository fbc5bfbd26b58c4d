#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200), 2026-12-03 (thirteenth session): the groups' replays on two streams
# (SCAO(graph_streams=2)), now each lane recorded on a side stream of its own (session_vb: graphs of both lanes
# recorded on one stream shared its cuBLAS workspace and ran NaN), against one stream, this tree, alternating, two
# processes each (their skipped steps printed: none expected); capture_check bit for bit with two streams (a NaN at
# step 16).
NAME=vc
. bench/session_lib.sh
capture '"graph_streams": 2'
profile s2 . '"cuda_graph": true, "graph_streams": 2'
profile s1 . '"cuda_graph": true, "graph_streams": 1'
profile s2b . '"cuda_graph": true, "graph_streams": 2'
profile s1b . '"cuda_graph": true, "graph_streams": 1'
for f in "$OUT"/prof_*.json; do
  python3 -c "import json,sys; d=json.load(open(sys.argv[1])); c=d['cases']['scao_norefresh']; print(sys.argv[1].split('/')[-1], 'skipped', c['counters'].get('skipped_steps', 0), 'peak MB', c.get('peak_mb'), 'adamw peak', d['cases']['adamw'].get('peak_mb'))" "$f"
done
pack
