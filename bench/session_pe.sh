#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200), 2026-12-04 (nineteenth session): the step's complement (every factor bf16,
# applied to bf16 weights and int8 bits) re-swept now that its rank chunks are 32 wide (pipeline stages, warps, tiles,
# a register cap); the best setting, when it beats the default by 3% or more, then A/B in the 405M step (two processes
# a side, alternating).
NAME=pe
. bench/session_lib.sh
sweep cu complement_update "bf16 X_m" '[{"lowrank.COMPLEMENT_STAGES": 2}, {"lowrank.COMPLEMENT_STAGES": 3},
{"lowrank.COMPLEMENT_STAGES": 5}, {"lowrank.COMPLEMENT_WARPS": [8, 8]}, {"lowrank.COMPLEMENT_WARPS": [8, 8],
"lowrank.COMPLEMENT_STAGES": 3}, {"lowrank.COMPLEMENT_MAXNREG": 168}, {"lowrank.BM": 128},
{"lowrank.BN": 128}, {"lowrank.BM": 128, "lowrank.COMPLEMENT_WARPS": [8, 8]}]'
SETS=$(python3 - "$W/sweep_cu.json" <<'PY'
import json, sys
k = json.load(open(sys.argv[1]))["kernels"][0]
best = min(k["sweep"], key=lambda s: s["ms"])
if best["ms"] <= 0.97 * k["ms"]:
    print(" ".join(f"--set {a}={json.dumps(b, separators=(',', ':'))}" for a, b in best.items() if a != "ms"))
PY
)
echo "best: ${SETS:-none}"
if [ -n "$SETS" ]; then
  profile def
  profile best . '"cuda_graph": true' "$SETS"
  profile def2
  profile best2 . '"cuda_graph": true' "$SETS"
  summary
fi
pack
