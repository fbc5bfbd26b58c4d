#!/usr/bin/env bash
# GPU call (device tool, nvidia-h200), 2026-12-04 (twentieth session): the step's complement (every factor bf16,
# applied to bf16 weights and int8 bits) with its tail formed before the update's product (one accumulator live,
# lowrank.COMPLEMENT_SEQUENTIAL) and as a persistent kernel (COMPLEMENT_PERSIST programs a multiprocessor, each
# looping over tiles; COMPLEMENT_FLATTEN: the tile loop flattened with the rank loop). The kernels' suite first with
# both on (every complement case against its twin on the H200); the settings timed on the bench case (the default
# twice, first and last: the case's time swings); the best, when it beats the default by 3% or more, A/B in the
# 405M step (two processes a side, alternating). Both arrangements ran slower (BENCHMARKS.md §0) and their switches
# were removed in the next commit: run this script at commit 0cb782f.
NAME=oa
. bench/session_lib.sh
kernels vseq . 240 --only complement_update --set lowrank.COMPLEMENT_SEQUENTIAL=true \
  --set lowrank.COMPLEMENT_PERSIST=2 --set lowrank.COMPLEMENT_FLATTEN=true
kernels_report "$OUT/kernels_vseq.json"
S='"lowrank.COMPLEMENT_SEQUENTIAL": true'
P='"lowrank.COMPLEMENT_PERSIST"'
F='"lowrank.COMPLEMENT_FLATTEN": true'
sweep cu complement_update "bf16 X_m" "[{}, {$S}, {$P: 2}, {$P: 2, $S}, {$P: 2, $S, $F}, {$P: 1, $S, $F},
{$P: 3, $S}, {$P: 1}, {}]"
SETS=$(python3 - "$W/sweep_cu.json" <<'PY'
import json, sys
k = json.load(open(sys.argv[1]))["kernels"][0]
base = min(k["ms"], *(s["ms"] for s in k["sweep"] if len(s) == 1))
best = min((s for s in k["sweep"] if len(s) > 1), key=lambda s: s["ms"])
if best["ms"] <= 0.97 * base:
    print(" ".join(f"--set {a}={json.dumps(b, separators=(',', ':'))}" for a, b in best.items() if a != "ms"))
PY
)
echo "best: ${SETS:-none}"
if [ -n "$SETS" ]; then
  profile def
  profile best . '"cuda_graph": true' "$SETS"
  profile def2
  profile best2 . '"cuda_graph": true' "$SETS"
else
  profile def
  profile seq . '"cuda_graph": true' "--set lowrank.COMPLEMENT_SEQUENTIAL=true"
fi
summary
pack
