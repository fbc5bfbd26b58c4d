#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200), 2026-12-03 (thirteenth session): replays on two streams (the default) against
# one, this tree, where the step also refreshes: the 43M GPT (step() with refreshes every precond_freq 5 and
# without, fused AdamW in the same process) and the 405M GPT with refreshes; alternating, one or two processes each.
NAME=ve
. bench/session_lib.sh
small() {  # LABEL KW
  timeout 120 python3 -m bench.step_profile --size small --cases scao,scao_norefresh,adamw --steps 60 \
    --profile-steps 3 --scao-kwargs "{$2}" --out "$OUT/small_$1.json" > "$W/small_$1.log" 2>&1
  echo "small $1 rc=$?"; grep -E "step\(\)" "$W/small_$1.log"
}
large() {  # LABEL KW
  timeout 150 python3 -m bench.step_profile --size large --cases scao --steps 40 \
    --profile-steps 3 --scao-kwargs "{$2}" --out "$OUT/large_$1.json" > "$W/large_$1.log" 2>&1
  echo "large $1 rc=$?"; grep -E "step\(\)" "$W/large_$1.log"
}
small s2 '"cuda_graph": true'
small s1 '"cuda_graph": true, "graph_streams": 1'
small s2b '"cuda_graph": true'
small s1b '"cuda_graph": true, "graph_streams": 1'
large s2 '"cuda_graph": true'
large s1 '"cuda_graph": true, "graph_streams": 1'
pack
