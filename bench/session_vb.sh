#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200), 2026-12-03 (thirteenth session): the groups' replays on two streams
# (SCAO(graph_streams=2): bigger groups first, balanced by size, a memory pool per stream) against one, this tree,
# alternating, two processes each; capture_check bit for bit with two streams (a NaN at step 16).
NAME=vb
. bench/session_lib.sh
capture '"graph_streams": 2'
profile s2 . '"cuda_graph": true, "graph_streams": 2'
profile s1 . '"cuda_graph": true, "graph_streams": 1'
profile s2b . '"cuda_graph": true, "graph_streams": 2'
profile s1b . '"cuda_graph": true, "graph_streams": 1'
pack
